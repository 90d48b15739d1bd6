// Browser tests: the real binary, Debian's chromium driven by playwright-core. Two pages
// chat through a room, see each other in presence, one goes offline and gets what it
// missed back with `recovered`; the dashboard shows live numbers and can log in with a
// password. Screenshots land in reports/browser/ for a person to look at.
//
//   STARLING_BIN=path/to/starling CHROMIUM=/usr/bin/chromium node --test test/

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const bin = process.env.STARLING_BIN || join(homedir(), '.cache/starling/target/release/starling');
const shots = join(root, 'reports/browser');
const WAIT = 15_000;

/** Starts `starling serve` on a free port; resolves once it announces its address. */
async function startServer(args) {
  const storage = mkdtempSync(join(tmpdir(), 'starling-browser-'));
  // Every STARLING_* variable is a setting to the server: hand it none of ours.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('STARLING_')));
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--set', `storage.dir="${storage}"`, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the server did not start')), WAIT);
    lines.once('line', (l) => {
      clearTimeout(timer);
      resolve(l);
    });
    child.once('exit', (code) => reject(new Error(`the server exited: ${code}`)));
  });
  lines.on('line', () => {}); // keep draining
  const address = /^starling listening on (http:\/\/\S+)/.exec(first)?.[1];
  assert.ok(address, first);
  return {
    url: address,
    stop() {
      child.kill('SIGKILL');
      rmSync(storage, { recursive: true, force: true });
    },
  };
}

let browser;
before(async () => {
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // Root in a container: chromium's sandbox needs user namespaces it may not have.
    args: ['--no-sandbox'],
  });
});
after(async () => {
  await browser?.close();
});

async function openChat(server, room, name) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  await page.goto(`${server.url}/#room=${room}`);
  await page.fill('#name', name);
  await page.dispatchEvent('#name', 'change');
  await page.waitForSelector('#state.connected');
  return { context, page };
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send-form button');
}

const messageTexts = (page) => page.$$eval('#messages li .text', (els) => els.map((e) => e.textContent));

test('two pages chat, see each other, and one recovers what it missed offline (twice: its own button, the browser\'s offline event)', async () => {
  const server = await startServer(['--dev']);
  try {
    const room = `t${Date.now()}`;
    const a = await openChat(server, room, 'Ann');
    const b = await openChat(server, room, 'Bob');

    await say(a.page, 'hello from Ann');
    await b.page.waitForSelector('#messages li:has-text("hello from Ann")');
    await say(b.page, 'hi Ann');
    await a.page.waitForSelector('#messages li:has-text("hi Ann")');
    assert.equal(await a.page.textContent('#messages li:last-child .who'), 'Bob');

    // Presence: both pages list two people.
    await a.page.waitForFunction(() => document.querySelector('#here-count')?.textContent === '(2)');
    await b.page.waitForFunction(() => document.querySelector('#here-count')?.textContent === '(2)');
    assert.ok((await a.page.textContent('#presence')).includes('Ann (you)'));

    // Bob goes offline; Ann says three things; Bob comes back and gets them, marked.
    await b.page.click('#offline');
    await b.page.waitForSelector('#state.disconnected');
    for (const n of [1, 2, 3]) await say(a.page, `missed ${n}`);
    await a.page.waitForSelector('#messages li:has-text("missed 3")');
    await b.page.click('#offline');
    await b.page.waitForSelector('#notice:has-text("recovered 3 missed messages")');
    await b.page.waitForSelector('#messages li.recovered:has-text("missed 3")');
    assert.equal(await b.page.$$eval('#messages li.recovered', (els) => els.length), 3);
    assert.deepEqual(await messageTexts(b.page), await messageTexts(a.page), 'both pages hold the same conversation');

    // The browser itself loses the network (the offline event): the client drops its
    // socket, waits for the online event, and recovers what was said meanwhile.
    await b.context.setOffline(true);
    await b.page.waitForSelector('#state.connecting');
    for (const n of [1, 2]) await say(a.page, `while offline ${n}`);
    await a.page.waitForSelector('#messages li:has-text("while offline 2")');
    await b.context.setOffline(false);
    await b.page.waitForSelector('#notice:has-text("recovered 2 missed messages")');
    await b.page.waitForSelector('#messages li.recovered:has-text("while offline 2")');
    assert.deepEqual(await messageTexts(b.page), await messageTexts(a.page));

    // A third page joining later gets the conversation from history.
    const c = await openChat(server, room, 'Cy');
    await c.page.waitForSelector('#messages li:has-text("missed 3")');
    assert.deepEqual(await messageTexts(c.page), await messageTexts(a.page));
    await b.page.screenshot({ path: join(shots, 'chat.png') });

    // The dashboard (open in dev) shows live numbers: the three chat pages' connections.
    const dash = await browser.newPage({ viewport: { width: 1200, height: 1100 } });
    dash.setDefaultTimeout(WAIT);
    await dash.goto(`${server.url}/admin`);
    await dash.waitForSelector('#live.live');
    await dash.waitForFunction(
      () => document.querySelector('[data-metric="Connections"] .value')?.textContent === '3',
    );
    await dash.waitForSelector(`#top td:has-text("chat:${room}")`);
    // Analytics: no archive in dev, so the node answers; another window reloads it.
    await dash.waitForSelector('#analytics-source:has-text("source: node")');
    await dash.waitForSelector('#analytics-traffic tbody td:not(.muted)');
    await dash.selectOption('#analytics-window', '86400');
    await dash.waitForSelector('#analytics-source:has-text("per hour")');
    // Inspect the room: three subscribers, its history.
    await dash.fill('#inspect-channel', `chat:${room}`);
    await dash.click('#inspect-form button');
    await dash.waitForSelector('#inspect pre:has-text("missed 3")');
    // Publish from the dashboard: the chat pages show it.
    await dash.fill('#publish-channel', `chat:${room}`);
    await dash.fill('#publish-data', '{"name":"ops","text":"from the dashboard"}');
    await dash.click('#publish-form button');
    await dash.waitForSelector('#publish-result:has-text("Published at offset")');
    await a.page.waitForSelector('#messages li:has-text("from the dashboard")');
    // The room is among the busiest channels once two readings (5 s apart) saw it move.
    await dash.waitForSelector(`#top-rate td:has-text("chat:${room}")`);
    // Eight publications fit one history page: no older page to offer.
    assert.equal(await dash.isHidden('#inspect-older'), true);
    // A user lookup (the chat's users are anonymous: nobody by that name).
    await dash.fill('#user-id', 'nobody');
    await dash.click('#user-form button');
    await dash.waitForSelector('#user-result:has-text("nobody: 0 connection(s)")');
    // A few seconds of charts for the screenshot.
    await dash.waitForFunction(() => document.querySelectorAll('#nodes tbody tr').length === 1);
    await dash.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });
    for (const p of [a, b, c]) await p.context.close();
    await dash.close();
  } finally {
    server.stop();
  }
});

test('the dashboard asks for its password', async () => {
  const server = await startServer(['--set', 'admin.enabled=true', '--set', 'admin.password="s3cret-pw"']);
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(WAIT);
    await page.goto(`${server.url}/admin`);
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('#password', 'wrong');
    await page.click('#login-form button');
    await page.waitForSelector('#login-error:has-text("Wrong password")');
    await page.fill('#password', 's3cret-pw');
    await page.click('#login-form button');
    await page.waitForSelector('#live.live');
    assert.equal(await page.isHidden('#login'), true);
    // The session survives a reload (sessionStorage) without asking again.
    await page.reload();
    await page.waitForSelector('#live.live');
    assert.equal(await page.isHidden('#login'), true);
    await page.close();
  } finally {
    server.stop();
  }
});
