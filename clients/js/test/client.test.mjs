// The client against an in-process fake server: states, batching, reconnect rules, tokens,
// subscriptions, recovery requests, offline publishes. Every wait is on an event, bounded.
import assert from 'node:assert/strict';
import test from 'node:test';
import { WebSocket } from 'ws';
import { Client, ClientErrors, StarlingError, UnauthorizedError } from '../dist/starling.mjs';
import { defaultHandler, FakeServer } from './support/fake-server.mjs';
import { collect, nextEvent, until, withTimeout } from './support/wait.mjs';

/** A fake server and a client on it; both closed after the test. */
async function setup(t, options = {}) {
  const server = await FakeServer.start();
  const client = new Client(server.url, { websocket: WebSocket, minReconnectDelay: 20, maxReconnectDelay: 100, ...options });
  t.after(async () => {
    client.disconnect();
    await server.close();
  });
  return { server, client };
}

async function connected(client) {
  const ev = nextEvent(client, 'connected');
  client.connect();
  return ev;
}

for (const protocol of ['json', 'msgpack']) {
  test(`${protocol}: connect goes connecting → connected and sends name, version and token`, async (t) => {
    const { server, client } = await setup(t, { protocol, token: 'tok', version: '9.9' });
    const states = collect(client, 'state');
    const connecting = nextEvent(client, 'connecting');
    const ev = await connected(client);
    assert.deepEqual(await connecting, { code: 0, reason: 'connect called' });
    assert.deepEqual(ev, { client: 'client-1', version: 'fake', protocol, expires: false });
    assert.equal(client.state, 'connected');
    assert.equal(client.clientId, 'client-1');
    const conn = await server.connection(1);
    assert.equal(conn.protocol, `starling.${protocol}`);
    assert.deepEqual(conn.commands[0], { id: 1, connect: { name: 'js', version: '9.9', token: 'tok' } });
    client.disconnect();
    assert.deepEqual(states.map((s) => s.newState), ['connecting', 'connected', 'disconnected']);
  });

  test(`${protocol}: publication data: JSON values, and binary data as Uint8Array`, async (t) => {
    const { server, client } = await setup(t, { protocol });
    await connected(client);
    const sub = client.newSubscription('chat:a');
    await withTimeout(new Promise((r) => { sub.once('subscribed', r); sub.subscribe(); }));
    const conn = await server.connection(1);
    const pubs = collect(sub, 'publication');
    const binary = Uint8Array.from([0, 1, 255]);
    if (protocol === 'json') {
      conn.push({ channel: 'chat:a', pub: { data: { text: 'hi' }, offset: 1, info: { user: 'u', client: 'c', conn_info: { n: 1 } }, tags: { k: 'v' } } });
      conn.push({ channel: 'chat:a', pub: { b64data: 'AAH/', offset: 2 } });
    } else {
      const enc = new TextEncoder();
      conn.push({ channel: 'chat:a', pub: { data: enc.encode('{"text":"hi"}'), offset: 1, info: { user: 'u', client: 'c', conn_info: enc.encode('{"n":1}') }, tags: { k: 'v' } } });
      conn.push({ channel: 'chat:a', pub: { data: binary, offset: 2 } });
    }
    await until(() => pubs.length === 2, { label: 'two publications' });
    assert.deepEqual(pubs[0], { channel: 'chat:a', data: { text: 'hi' }, offset: 1, info: { user: 'u', client: 'c', connInfo: { n: 1 } }, tags: { k: 'v' } });
    assert.deepEqual(pubs[1], { channel: 'chat:a', data: binary, offset: 2 });
    assert.deepEqual(sub.position, { offset: 2, epoch: 'ep' });
    // And outgoing: a value, then bytes.
    await sub.publish({ text: 'yo' });
    await sub.publish(binary);
    const sent = conn.commands.filter((c) => c.publish).map((c) => c.publish);
    if (protocol === 'json') {
      assert.deepEqual(sent, [{ channel: 'chat:a', data: { text: 'yo' } }, { channel: 'chat:a', b64data: 'AAH/' }]);
    } else {
      assert.deepEqual(sent, [{ channel: 'chat:a', data: new TextEncoder().encode('{"text":"yo"}') }, { channel: 'chat:a', data: binary }]);
    }
  });
}

test('commands issued in one tick leave in one frame', async (t) => {
  const { server, client } = await setup(t);
  await connected(client);
  const conn = await server.connection(1);
  const before = conn.frames.length;
  const results = await Promise.all([client.publish('a', 1), client.publish('b', 2), client.presenceStats('c'), client.ping()]);
  assert.equal(conn.frames.length, before + 1, 'one frame for the four commands');
  assert.deepEqual(conn.frames.at(-1).map((m) => Object.keys(m)[1]), ['publish', 'publish', 'presence_stats', 'ping']);
  assert.deepEqual(results[0], { offset: 1, epoch: 'ep' });
  assert.deepEqual(results[2], { numClients: 1, numUsers: 1 });
  // The next tick is another frame.
  await client.publish('a', 3);
  assert.equal(conn.frames.length, before + 2);
});

test('replies are matched by id, not by position; errors carry code and temporary', async (t) => {
  const { server, client } = await setup(t);
  const held = [];
  server.handler = (cmd, conn) => (cmd.publish ? (held.push(cmd), undefined) : defaultHandler(cmd, conn));
  await connected(client);
  const conn = await server.connection(1);
  const a = client.publish('x', 'a');
  const b = client.publish('x', 'b');
  await until(() => held.length === 2, { label: 'two publishes' });
  conn.send(
    { id: held[1].id, error: { code: 116, message: 'server busy', temporary: true } },
    { id: held[0].id, publish: { offset: 7, epoch: 'E' } },
  );
  assert.deepEqual(await a, { offset: 7, epoch: 'E' });
  const err = await b.then(() => assert.fail('should reject'), (e) => e);
  assert.ok(err instanceof StarlingError);
  assert.equal(err.code, 116);
  assert.equal(err.temporary, true);
  assert.equal(err.unauthorized, false);
});

test('a command without a reply times out; one in flight when the connection drops is rejected as DISCONNECTED', async (t) => {
  const { server, client } = await setup(t, { timeout: 300 });
  server.handler = (cmd, conn) => (cmd.presence || cmd.history ? undefined : defaultHandler(cmd, conn));
  await connected(client);
  const err = await client.presence('a').catch((e) => e);
  assert.equal(err.code, ClientErrors.TIMEOUT);
  assert.equal(err.temporary, true);
  const conn = await server.connection(1);
  const pending = client.history('a');
  await conn.waitCommand('history');
  conn.terminate();
  const err2 = await pending.catch((e) => e);
  assert.equal(err2.code, ClientErrors.DISCONNECTED);
});

test('reconnects with full-jitter backoff between min and the capped exponential while connects fail', async (t) => {
  const min = 100, max = 400;
  const { server, client } = await setup(t, { minReconnectDelay: min, maxReconnectDelay: max });
  // The server refuses every connection at once (a reconnect-range code, no advice).
  server.wss.on('connection', (ws) => ws.close(4001, 'internal server error'));
  client.connect();
  await server.connection(5, 10000);
  const closes = server.connectionTimes;
  for (let i = 1; i < 5; i++) {
    const gap = closes[i] - closes[i - 1];
    const cap = Math.min(max, min * 2 ** (i - 1));
    // Lower bound exact (timers never fire early); the upper bound allows for scheduling and the handshake.
    assert.ok(gap >= min - 2, `gap ${i} = ${gap} ms, below min ${min}`);
    assert.ok(gap <= cap + 400, `gap ${i} = ${gap} ms, above cap ${cap}`);
  }
  assert.equal(client.state, 'connecting');
});

test("the server's delay advice sets the first reconnect delay", async (t) => {
  // Our own backoff would wait at least 3 s; the advice says 150 ms.
  const { server, client } = await setup(t, { minReconnectDelay: 3000, maxReconnectDelay: 6000 });
  await connected(client);
  const conn = await server.connection(1);
  const connecting = nextEvent(client, 'connecting');
  const closedAt = Date.now();
  conn.disconnect(4000, 'shutdown', true, 150);
  assert.deepEqual(await connecting, { code: 4000, reason: 'shutdown' });
  await nextEvent(client, 'connected');
  const waited = server.connectionTimes[1] - closedAt;
  assert.ok(waited >= 145 && waited < 2000, `reconnected after ${waited} ms`);
});

for (const [how, code] of [['push + close', 4501], ['close only', 4503], ['close only', 4999], ['close only', 1000]]) {
  test(`no reconnect after ${code} (${how}): disconnected with code and reason`, async (t) => {
    const { server, client } = await setup(t, { minReconnectDelay: 5, maxReconnectDelay: 10 });
    await connected(client);
    const conn = await server.connection(1);
    const disconnected = nextEvent(client, 'disconnected');
    if (how === 'push + close') conn.disconnect(code, 'unauthorized', false);
    else conn.close(code, 'bye');
    assert.deepEqual(await disconnected, { code, reason: how === 'push + close' ? 'unauthorized' : 'bye' });
    assert.equal(client.state, 'disconnected');
    // A reconnect would come within ~10 ms; give it 20 times that.
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(server.connections.length, 1);
  });
}

test('a dropped connection (1006) reconnects and resubscribes with recovery from the last position', async (t) => {
  const { server, client } = await setup(t);
  let subscribes = 0;
  server.handler = (cmd, conn) => {
    if (!cmd.subscribe) return defaultHandler(cmd, conn);
    subscribes++;
    if (subscribes === 1) return { subscribe: { epoch: 'E1', offset: 5, recoverable: true } };
    return {
      subscribe: {
        epoch: 'E1', offset: 8, recoverable: true, recovered: true,
        publications: [6, 7, 8].map((offset) => ({ data: { n: offset }, offset })),
      },
    };
  };
  await connected(client);
  const sub = client.newSubscription('chat:r');
  const first = nextEvent(sub, 'subscribed');
  sub.subscribe();
  assert.deepEqual(await first, { channel: 'chat:r', recoverable: true, wasRecovering: false, recovered: false, recoveredCount: 0, epoch: 'E1', offset: 5 });
  const subscribing = nextEvent(sub, 'subscribing');
  const pubs = collect(sub, 'publication');
  const second = nextEvent(sub, 'subscribed');
  (await server.connection(1)).terminate();
  assert.equal((await subscribing).code, 1006);
  assert.deepEqual(await second, { channel: 'chat:r', recoverable: true, wasRecovering: true, recovered: true, recoveredCount: 3, epoch: 'E1', offset: 8 });
  const conn2 = await server.connection(2);
  const cmd = await conn2.waitCommand('subscribe');
  assert.deepEqual(cmd.subscribe, { channel: 'chat:r', recover: true, offset: 5, epoch: 'E1' });
  // Connect then subscribe went in order on the new socket.
  assert.ok(conn2.commands[0].connect);
  await until(() => pubs.length === 3, { label: 'recovered publications' });
  assert.deepEqual(pubs.map((p) => p.offset), [6, 7, 8]);
});

test('subscribe() and getOrCreateSubscription are idempotent (React double mount); newSubscription refuses a duplicate', async (t) => {
  const { server, client } = await setup(t);
  const a = client.getOrCreateSubscription('room:1');
  const b = client.getOrCreateSubscription('room:1', { recover: false });
  assert.equal(a, b);
  assert.throws(() => client.newSubscription('room:1'), /already exists/);
  a.subscribe();
  b.subscribe();
  await connected(client);
  await a.ready();
  a.subscribe();
  const conn = await server.connection(1);
  await client.ping(); // a round trip after the subscribe: anything more would have arrived
  assert.equal(conn.commands.filter((c) => c.subscribe).length, 1);
  client.removeSubscription(a);
  assert.equal(client.getSubscription('room:1'), undefined);
  await conn.waitCommand('unsubscribe');
  const c = client.getOrCreateSubscription('room:1');
  assert.notEqual(c, a);
});

test('unsubscribe() while the subscribe is in flight: the late reply is ignored', async (t) => {
  const { server, client } = await setup(t);
  const held = [];
  server.handler = (cmd, conn) => (cmd.subscribe ? (held.push(cmd), undefined) : defaultHandler(cmd, conn));
  await connected(client);
  const sub = client.newSubscription('x');
  const states = collect(sub, 'state');
  sub.subscribe();
  const conn = await server.connection(1);
  await until(() => held.length === 1);
  sub.unsubscribe();
  await conn.waitCommand('unsubscribe');
  conn.send({ id: held[0].id, subscribe: { epoch: 'e', offset: 0 } });
  await client.ping();
  assert.equal(sub.state, 'unsubscribed');
  assert.deepEqual(states.map((s) => s.newState), ['subscribing', 'unsubscribed']);
});

test('subscribe errors: permanent → unsubscribed with the code; temporary → retried', async (t) => {
  const { server, client } = await setup(t);
  let tries = 0;
  server.handler = (cmd, conn) => {
    if (cmd.subscribe?.channel === 'denied') return { error: { code: 103, message: 'permission denied' } };
    if (cmd.subscribe?.channel === 'busy' && ++tries < 3) return { error: { code: 114, message: 'too many requests', temporary: true } };
    return defaultHandler(cmd, conn);
  };
  await connected(client);
  const denied = client.newSubscription('denied');
  const errorEv = nextEvent(denied, 'error');
  const unsub = nextEvent(denied, 'unsubscribed');
  denied.subscribe();
  assert.deepEqual(await unsub, { channel: 'denied', code: 103, reason: 'permission denied' });
  const { error } = await errorEv;
  assert.equal(error.unauthorized, true);
  const busy = client.newSubscription('busy');
  busy.subscribe();
  await busy.ready();
  assert.equal(tries, 3);
});

test('server unsubscribe push, join and leave pushes', async (t) => {
  const { server, client } = await setup(t);
  await connected(client);
  const sub = client.newSubscription('p');
  sub.subscribe();
  await sub.ready();
  const conn = await server.connection(1);
  const join = nextEvent(sub, 'join');
  conn.push({ channel: 'p', join: { info: { user: 'ann', client: 'c9' } } });
  assert.deepEqual(await join, { channel: 'p', info: { user: 'ann', client: 'c9' } });
  const leave = nextEvent(sub, 'leave');
  conn.push({ channel: 'p', leave: { info: { user: 'ann', client: 'c9' } } });
  assert.equal((await leave).info.user, 'ann');
  const unsub = nextEvent(sub, 'unsubscribed');
  conn.push({ channel: 'p', unsubscribe: { code: 2001, reason: 'kicked' } });
  assert.deepEqual(await unsub, { channel: 'p', code: 2001, reason: 'kicked' });
  assert.equal(sub.state, 'unsubscribed');
});

test('4004 (token expired) → getToken, then reconnect with the new token', async (t) => {
  let n = 0;
  const { server, client } = await setup(t, { getToken: async () => `token-${++n}` });
  await connected(client);
  const conn = await server.connection(1);
  assert.equal(conn.commands[0].connect.token, 'token-1');
  conn.disconnect(4004, 'token expired', true, 10);
  await nextEvent(client, 'connected');
  const conn2 = await server.connection(2);
  assert.equal(conn2.commands[0].connect.token, 'token-2');
  assert.equal(n, 2);
});

test('connect error 109 → getToken and connect again on the same socket', async (t) => {
  let n = 0;
  const { server, client } = await setup(t, { token: 'old', getToken: async () => `fresh-${++n}` });
  server.handler = (cmd, conn) =>
    cmd.connect?.token === 'old' ? { error: { code: 109, message: 'token expired' } } : defaultHandler(cmd, conn);
  await connected(client);
  assert.equal(server.connections.length, 1);
  const conn = await server.connection(1);
  assert.deepEqual(conn.commands.map((c) => c.connect.token), ['old', 'fresh-1']);
});

test('an expiring token is refreshed with the refresh command before expiry, without reconnecting', async (t) => {
  let n = 0;
  const { server, client } = await setup(t, { token: 't0', getToken: async () => `t${++n}` });
  server.handler = (cmd, conn) => {
    if (cmd.connect) return { connect: { client: 'c', version: 'fake', ping: 25, expires: true, ttl: 3 } };
    if (cmd.refresh) return { refresh: { expires: true, ttl: 1 } };
    return defaultHandler(cmd, conn);
  };
  const ev = await connected(client);
  assert.equal(ev.expires, true);
  assert.equal(ev.ttl, 3);
  const started = Date.now();
  const conn = await server.connection(1);
  const first = await conn.waitCommand('refresh');
  assert.deepEqual(first.refresh, { token: 't1' });
  const elapsed = Date.now() - started;
  // ttl 3 means 2 to 3 s left: half of the 2 s, well before the server would close.
  assert.ok(elapsed >= 950 && elapsed < 2000, `refreshed after ${elapsed} ms of a 3 s ttl`);
  // The refresh reply's ttl schedules the next one (ttl 1: as soon as allowed, 500 ms).
  const second = await conn.waitCommand('refresh', (c) => c.refresh.token === 't2');
  assert.ok(second);
  assert.equal(server.connections.length, 1);
  assert.equal(client.state, 'connected');
});

test('refresh answered 104 (older server): the new token is kept for the reconnect at expiry', async (t) => {
  let n = 0;
  const { server, client } = await setup(t, { token: 't0', getToken: async () => `t${++n}` });
  server.handler = (cmd, conn) => {
    if (cmd.connect) return { connect: { client: 'c', version: 'fake', ping: 25, expires: true, ttl: 1 } };
    if (cmd.refresh) return { error: { code: 104, message: 'method not found' } };
    return defaultHandler(cmd, conn);
  };
  await connected(client);
  const conn = await server.connection(1);
  await conn.waitCommand('refresh');
  const err = await nextEvent(client, 'error', { filter: (e) => e.type === 'refresh' });
  assert.equal(err.error.code, 104);
  conn.disconnect(4004, 'token expired', true, 5);
  await nextEvent(client, 'connected');
  const conn2 = await server.connection(2);
  assert.ok(['t1', 't2'].includes(conn2.commands[0].connect.token));
});

test('getToken throwing UnauthorizedError stops the client; another error is retried', async (t) => {
  let calls = 0;
  const { server, client } = await setup(t, {
    getToken: async () => {
      calls++;
      if (calls === 1) throw new Error('backend down');
      throw new UnauthorizedError();
    },
  });
  const errors = collect(client, 'error');
  const disconnected = nextEvent(client, 'disconnected');
  client.connect();
  assert.deepEqual(await disconnected, { code: 4501, reason: 'unauthorized' });
  assert.equal(calls, 2);
  assert.equal(errors.filter((e) => e.type === 'token').length, 2);
  assert.equal(server.connections.length, 2);
  assert.equal(client.state, 'disconnected');
});

test('publishes while disconnected are queued (bounded) and sent in order after the subscribes', async (t) => {
  const { server, client } = await setup(t, { maxQueuedPublishes: 2 });
  const sub = client.newSubscription('q');
  sub.subscribe();
  const p1 = client.publish('q', 1);
  const p2 = sub.publish(2);
  const full = await client.publish('q', 3).catch((e) => e);
  assert.equal(full.code, ClientErrors.QUEUE_FULL);
  client.connect();
  assert.deepEqual(await Promise.all([p1, p2]), [{ offset: 1, epoch: 'ep' }, { offset: 2, epoch: 'ep' }]);
  const conn = await server.connection(1);
  assert.deepEqual(conn.commands.map((c) => Object.keys(c)[1]), ['connect', 'subscribe', 'publish', 'publish']);
  assert.deepEqual(conn.commands.slice(2).map((c) => c.publish.data), [1, 2]);
});

test("publishes while disconnected are refused with offlinePublish: 'refuse'", async (t) => {
  const { server, client } = await setup(t, { offlinePublish: 'refuse' });
  const err = await client.publish('q', 1).catch((e) => e);
  assert.equal(err.code, ClientErrors.NOT_CONNECTED);
  assert.equal(err.temporary, true);
  await connected(client);
  (await server.connection(1)).terminate();
  await nextEvent(client, 'connecting');
  const err2 = await client.publish('q', 2).catch((e) => e);
  assert.equal(err2.code, ClientErrors.NOT_CONNECTED);
});

test('disconnect() rejects queued publishes and pending waits', async (t) => {
  const { client } = await setup(t);
  const queued = client.publish('q', 1);
  client.connect();
  client.disconnect();
  const err = await queued.catch((e) => e);
  assert.equal(err.code, ClientErrors.CLIENT_CLOSED);
  assert.equal(err.temporary, false);
});

test('browser offline drops the socket at once; online reconnects without waiting for backoff', async (t) => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  });
  const { server, client } = await setup(t, { minReconnectDelay: 60000, maxReconnectDelay: 60000 });
  await connected(client);
  const conn = await server.connection(1);
  const connecting = nextEvent(client, 'connecting');
  target.dispatchEvent(new Event('offline'));
  assert.equal((await connecting).reason, 'offline');
  await withTimeout(conn.closed, 2000, 'the socket to close');
  assert.equal(client.state, 'connecting');
  const reconnected = nextEvent(client, 'connected');
  target.dispatchEvent(new Event('online'));
  await reconnected; // well before the 60 s backoff
  assert.equal(server.connections.length, 2);
});

test('listener exceptions do not break the client', async (t) => {
  const { client } = await setup(t);
  const reported = [];
  globalThis.reportError = (e) => reported.push(e);
  t.after(() => delete globalThis.reportError);
  client.on('connected', () => { throw new Error('app bug'); });
  await connected(client);
  assert.equal(client.state, 'connected');
  assert.equal(reported[0].message, 'app bug');
});
