// What the build ships: the size budget of the browser bundle, a self-contained IIFE that
// exposes `Starling`, the ESM entry, and type declarations an application can compile against.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';
import { gzipSync } from 'node:zlib';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const iife = readFileSync(join(root, 'dist/starling.iife.js'));

// The budget (README, "Size"): centrifuge-js is ~54 kB minified; this client must stay
// well under half of that. Raise it only on purpose.
const BUDGET_MIN = 28 * 1024;
const BUDGET_GZIP = 9 * 1024;

test(`the IIFE bundle fits the budget (${BUDGET_MIN} B minified, ${BUDGET_GZIP} B gzipped)`, () => {
  const gz = gzipSync(iife, { level: 9 }).length;
  console.log(`# dist/starling.iife.js: ${iife.length} B minified, ${gz} B gzip -9`);
  assert.ok(iife.length <= BUDGET_MIN, `${iife.length} B minified`);
  assert.ok(gz <= BUDGET_GZIP, `${gz} B gzipped`);
});

test('the IIFE is self-contained and exposes Starling.Client in a bare browser-like global', () => {
  const text = iife.toString();
  assert.doesNotMatch(text, /\brequire\(|\bimport\(|^import /m);
  const sandbox = { TextEncoder, TextDecoder, atob, btoa, setTimeout, clearTimeout, queueMicrotask, console };
  sandbox.window = sandbox;
  vm.createContext(sandbox);
  vm.runInContext(text, sandbox);
  const S = sandbox.Starling;
  assert.equal(typeof S.Client, 'function');
  assert.equal(typeof S.Subscription, 'function');
  assert.equal(typeof S.StarlingError, 'function');
  assert.equal(typeof S.encodeMsgpack, 'function');
  const c = new S.Client('ws://x/connection/websocket');
  assert.equal(c.state, 'disconnected');
  assert.equal(c.getOrCreateSubscription('a'), c.getOrCreateSubscription('a'));
  // Without a WebSocket anywhere, connect() stops with a clear reason instead of throwing.
  const events = [];
  c.on('disconnected', (e) => events.push(e));
  c.connect();
  assert.equal(c.state, 'disconnected');
  assert.match(events[0].reason, /WebSocket/);
});

test('the ESM bundle exports the public API', async () => {
  const mod = await import('../dist/starling.mjs');
  for (const name of ['Client', 'Subscription', 'StarlingError', 'UnauthorizedError', 'ClientErrors', 'ServerErrors', 'DisconnectCodes', 'backoffDelay', 'shouldReconnect', 'encodeMsgpack', 'decodeMsgpack', 'VERSION']) {
    assert.ok(name in mod, name);
  }
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  assert.equal(mod.VERSION, pkg.version);
  assert.deepEqual(pkg.dependencies ?? {}, {}, 'no runtime dependencies');
});

test('the type declarations compile an application under strict settings', () => {
  const tsc = join(root, 'node_modules/typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', join(root, 'test/types')], { stdio: 'pipe' });
});
