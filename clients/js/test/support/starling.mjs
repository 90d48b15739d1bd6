// Runs the real `starling` binary for integration tests: on a free port (or a given one,
// to restart in place), with a temporary message log, in --dev mode with a token secret.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { until, withTimeout } from './wait.mjs';

export const SECRET = 'js-client-test-secret';
export const API_KEY = 'dev-api-key';

export function starlingBin() {
  return process.env.STARLING_BIN || join(homedir(), '.cache/starling/target/release/starling');
}

export function binMissing() {
  return existsSync(starlingBin()) ? false : `no server binary at ${starlingBin()} (set STARLING_BIN)`;
}

/** A fresh directory for a server's message log, removed by `cleanup()`. */
export function tempStorage() {
  const dir = mkdtempSync(join(tmpdir(), 'starling-js-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** An HS256 JWT signed with the test secret (or `secret`). */
export function token(claims, secret = SECRET) {
  const b64url = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

export const nowSecs = () => Math.floor(Date.now() / 1000);

/**
 * The server reads every STARLING_<SECTION>_<KEY> variable as a setting and refuses unknown
 * ones, STARLING_BIN included: hand it an environment without ours.
 */
function serverEnv() {
  const env = { ...process.env, STARLING_LOG: process.env.TEST_STARLING_LOG ?? 'warn' };
  delete env.STARLING_BIN;
  return env;
}

export class Starling {
  /**
   * Starts a node and resolves once it listens and `/ready` answers 200.
   * `port` 0 picks a free one; `args` are extra `serve` arguments.
   */
  static async start({ storage, port = 0, args = [] }) {
    const child = spawn(
      starlingBin(),
      [
        'serve', '--dev',
        '--listen', `127.0.0.1:${port}`,
        '--token-hmac-secret', SECRET,
        '--set', `storage.dir=${JSON.stringify(storage)}`,
        // Reconnect advice and the drain kept short so restarts are quick.
        '--set', 'client.reconnect_delay_min_ms=20',
        '--set', 'client.reconnect_delay_max_ms=60',
        '--set', 'server.shutdown_timeout_secs=5',
        ...args,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'], env: serverEnv() },
    );
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const lines = createInterface({ input: child.stdout });
    const first = await withTimeout(
      new Promise((resolve, reject) => {
        lines.once('line', resolve);
        exited.then(({ code }) => reject(new Error(`starling exited (${code}) before listening`)));
      }),
      15000,
      'the server to listen',
    );
    lines.on('line', () => {}); // keep draining stdout
    const m = /^starling listening on http:\/\/(\S+)/.exec(first);
    if (!m) {
      child.kill('SIGKILL');
      throw new Error(`unexpected first line: ${first}`);
    }
    const node = new Starling(child, m[1], exited);
    await until(async () => (await fetch(`${node.http}/ready`).catch(() => undefined))?.status === 200, {
      timeout: 10000,
      every: 20,
      label: '/ready',
    });
    return node;
  }

  constructor(child, addr, exited) {
    this.child = child;
    this.addr = addr;
    this.exited = exited;
    this.port = Number(addr.split(':').pop());
  }

  get http() {
    return `http://${this.addr}`;
  }

  get ws() {
    return `ws://${this.addr}/connection/websocket`;
  }

  /** `POST /api/<method>` with the dev key; returns the JSON body, throws on a non-2xx status. */
  async api(method, body) {
    const res = await fetch(`${this.http}/api/${method}`, {
      method: 'POST',
      headers: { Authorization: `apikey ${API_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`api ${method}: ${res.status} ${text}`);
    return JSON.parse(text);
  }

  /** SIGTERM: an orderly stop (clients drained with advice, the log closed: epochs kept). */
  async stop() {
    this.child.kill('SIGTERM');
    return withTimeout(this.exited, 15000, 'the server to stop');
  }

  /** SIGKILL, for cleanup. */
  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}
