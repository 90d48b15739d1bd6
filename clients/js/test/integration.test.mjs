// The client against the real server binary (STARLING_BIN, or the release build under
// ~/.cache/starling/target): each test waits on events, bounded; no fixed sleeps.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { Client, ClientErrors } from '../dist/starling.mjs';
import { binMissing, nowSecs, Starling, tempStorage, token } from './support/starling.mjs';
import { collect, nextEvent, until } from './support/wait.mjs';

const skip = binMissing();
const clients = [];

function client(node, options = {}) {
  const c = new Client(node.ws, { websocket: WebSocket, minReconnectDelay: 50, maxReconnectDelay: 300, ...options });
  clients.push(c);
  return c;
}

async function connect(c) {
  const ev = nextEvent(c, 'connected');
  c.connect();
  return ev;
}

async function subscribed(c, channel, options) {
  const sub = c.getOrCreateSubscription(channel, options);
  const ev = nextEvent(sub, 'subscribed');
  sub.subscribe();
  await ev;
  return sub;
}

describe('against the real server', { skip }, () => {
  let node;
  let storage;

  before(async () => {
    storage = tempStorage();
    node = await Starling.start({
      storage: storage.dir,
      // A configured namespace with join/leave pushes (so the test does not rest on what
      // --dev opens by default).
      args: ['--set', 'namespaces.room.join_leave=true', '--set', 'namespaces.room.history_size=10'],
    });
  });

  after(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    await node?.kill();
    storage?.cleanup();
  });

  for (const [pubProto, subProto] of [['json', 'json'], ['msgpack', 'msgpack'], ['json', 'msgpack'], ['msgpack', 'json']]) {
    test(`publish from ${pubProto} reaches a ${subProto} subscriber: JSON values and binary data`, async () => {
      const channel = `chat:${pubProto}-${subProto}`;
      const publisher = client(node, { protocol: pubProto });
      const subscriber = client(node, { protocol: subProto });
      await Promise.all([connect(publisher), connect(subscriber)]);
      const sub = await subscribed(subscriber, channel);
      const pubs = collect(sub, 'publication');
      const value = { text: 'héllo', n: [1, 2.5, null, true], nested: { ok: 'yes' } };
      const binary = Uint8Array.from([0, 1, 2, 254, 255]);
      const r1 = await publisher.publish(channel, value);
      const r2 = await publisher.publish(channel, binary);
      await publisher.publish(channel, 'just a string');
      assert.equal(r2.offset, r1.offset + 1);
      assert.ok(r1.epoch);
      await until(() => pubs.length === 3, { label: 'three publications' });
      assert.deepEqual(pubs.map((p) => p.data), [value, binary, 'just a string']);
      assert.deepEqual(pubs.map((p) => p.offset), [r1.offset, r2.offset, r2.offset + 1]);
      assert.equal(pubs[0].channel, channel);
    });
  }

  test('data published through the HTTP API reaches JSON and MessagePack subscribers alike', async () => {
    const json = client(node);
    const mp = client(node, { protocol: 'msgpack' });
    await Promise.all([connect(json), connect(mp)]);
    const [a, b] = await Promise.all([subscribed(json, 'chat:api'), subscribed(mp, 'chat:api')]);
    const got = Promise.all([nextEvent(a, 'publication'), nextEvent(b, 'publication')]);
    await node.api('publish', { channel: 'chat:api', data: { from: 'backend' } });
    const [pa, pb] = await got;
    assert.deepEqual(pa.data, { from: 'backend' });
    assert.deepEqual(pb.data, { from: 'backend' });
  });

  test('history pages forward with since and backward with reverse', async () => {
    const channel = 'chat:history';
    let last;
    for (let i = 1; i <= 25; i++) last = await node.api('publish', { channel, data: { i } });
    const c = client(node, { protocol: 'msgpack' });
    await connect(c);
    const sub = await subscribed(c, channel);
    // Forward, ten at a time, until the stream's newest offset.
    const seen = [];
    let page = await sub.history({ limit: 10 });
    for (;;) {
      seen.push(...page.publications.map((p) => p.data.i));
      const tail = page.publications.at(-1);
      if (!tail || tail.offset >= page.offset) break;
      page = await sub.history({ limit: 10, since: { offset: tail.offset, epoch: page.epoch } });
    }
    assert.deepEqual(seen, Array.from({ length: 25 }, (_, i) => i + 1));
    assert.equal(page.offset, last.result.offset);
    // Backward: newest first, then before the oldest of that page.
    const newest = await sub.history({ limit: 3, reverse: true });
    assert.deepEqual(newest.publications.map((p) => p.data.i), [25, 24, 23]);
    const before = await sub.history({ limit: 3, reverse: true, since: { offset: newest.publications[2].offset, epoch: newest.epoch } });
    assert.deepEqual(before.publications.map((p) => p.data.i), [22, 21, 20]);
    // Only the position.
    const pos = await sub.history({ limit: 0 });
    assert.deepEqual(pos.publications, []);
    assert.equal(pos.offset, page.offset);
  });

  test('presence and presenceStats list the subscribers with their connection info', async () => {
    const channel = 'chat:presence';
    const exp = nowSecs() + 600;
    const alice = client(node, { token: token({ sub: 'alice', exp, info: { name: 'Alice' } }) });
    const bob = client(node, { protocol: 'msgpack', token: token({ sub: 'bob', exp, info: { name: 'Bob' } }) });
    const [ea, eb] = await Promise.all([connect(alice), connect(bob)]);
    const subA = await subscribed(alice, channel);
    await subscribed(bob, channel);
    const presence = await subA.presence();
    assert.deepEqual(Object.keys(presence.clients).sort(), [ea.client, eb.client].sort());
    assert.deepEqual(presence.clients[eb.client], { user: 'bob', client: eb.client, connInfo: { name: 'Bob' } });
    assert.deepEqual(await subA.presenceStats(), { numClients: 2, numUsers: 2 });
    // From the MessagePack side too.
    const viaBob = await bob.presence(channel);
    assert.deepEqual(viaBob.clients[ea.client], { user: 'alice', client: ea.client, connInfo: { name: 'Alice' } });
  });

  test('join and leave pushes in a namespace with join_leave', async () => {
    const channel = 'room:lobby';
    const exp = nowSecs() + 600;
    const watcher = client(node, { token: token({ sub: 'watcher', exp }) });
    const visitor = client(node, { protocol: 'msgpack', token: token({ sub: 'visitor', exp }) });
    await Promise.all([connect(watcher), connect(visitor)]);
    const sub = await subscribed(watcher, channel);
    const join = nextEvent(sub, 'join', { filter: (e) => e.info.user === 'visitor' });
    const vsub = await subscribed(visitor, channel);
    assert.equal((await join).info.client, visitor.clientId);
    const leave = nextEvent(sub, 'leave', { filter: (e) => e.info.user === 'visitor' });
    vsub.unsubscribe();
    assert.equal((await leave).info.client, visitor.clientId);
  });

  test('getOrCreateSubscription and subscribe() twice: one subscription, no "already subscribed" error', async () => {
    const c = client(node);
    await connect(c);
    const errors = [];
    const mount = () => {
      const s = c.getOrCreateSubscription('chat:react');
      s.on('error', (e) => errors.push(e));
      s.subscribe();
      return s;
    };
    const s1 = mount();
    const s2 = mount(); // strict mode's second mount
    assert.equal(s1, s2);
    await s1.ready();
    const pubs = collect(s1, 'publication');
    await c.publish('chat:react', 'once');
    await c.ping();
    await until(() => pubs.length >= 1, { label: 'the publication' });
    await c.ping(); // a duplicate delivery would have arrived before this round trip's reply
    assert.equal(pubs.length, 1);
    assert.deepEqual(errors, []);
  });

  test('publishes while disconnected: queued ones arrive after connect, refused ones fail at once', async () => {
    const channel = 'chat:offline';
    const watcher = client(node);
    await connect(watcher);
    const sub = await subscribed(watcher, channel);
    const pubs = collect(sub, 'publication');
    const queued = client(node, { protocol: 'msgpack' });
    const p1 = queued.publish(channel, { q: 1 });
    const p2 = queued.publish(channel, { q: 2 });
    const refused = client(node, { offlinePublish: 'refuse' });
    const err = await refused.publish(channel, { q: 3 }).catch((e) => e);
    assert.equal(err.code, ClientErrors.NOT_CONNECTED);
    queued.connect();
    const [r1, r2] = await Promise.all([p1, p2]);
    assert.equal(r2.offset, r1.offset + 1);
    await until(() => pubs.length === 2, { label: 'the queued publications' });
    assert.deepEqual(pubs.map((p) => p.data), [{ q: 1 }, { q: 2 }]);
  });

  test('an invalid token closes with 4501 and the client does not reconnect', async () => {
    let sockets = 0;
    class Counting extends WebSocket {
      constructor(...args) {
        super(...args);
        sockets++;
      }
    }
    const c = client(node, { websocket: Counting, minReconnectDelay: 5, maxReconnectDelay: 10, token: token({ sub: 'mallory', exp: nowSecs() + 600 }, 'wrong-secret') });
    const disconnected = nextEvent(c, 'disconnected');
    c.connect();
    const ev = await disconnected;
    assert.equal(ev.code, 4501);
    assert.equal(c.state, 'disconnected');
    // A reconnect loop would open a socket every ~10 ms; give it 30 times that.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(sockets, 1);
  });

  test('an expired token at connect: getToken, then connect again on the same socket', async () => {
    let sockets = 0;
    class Counting extends WebSocket {
      constructor(...args) {
        super(...args);
        sockets++;
      }
    }
    let calls = 0;
    const c = client(node, {
      websocket: Counting,
      token: token({ sub: 'late', exp: nowSecs() - 10 }),
      getToken: async () => {
        calls++;
        return token({ sub: 'late', exp: nowSecs() + 600 });
      },
    });
    const connectError = nextEvent(c, 'error', { filter: (e) => e.type === 'connect' });
    await connect(c);
    assert.equal((await connectError).error.code, 109);
    assert.equal(calls, 1);
    assert.equal(sockets, 1);
  });

  test('an expiring token: getToken is called and the connection refreshed in place', async (t) => {
    let calls = 0;
    const firstExp = nowSecs() + 3;
    const c = client(node, {
      token: token({ sub: 'eve', exp: firstExp }),
      getToken: async () => {
        calls++;
        return token({ sub: 'eve', exp: nowSecs() + 600 });
      },
    });
    const refreshErrors = collect(c, 'error');
    const ev = await connect(c);
    assert.equal(ev.expires, true);
    assert.ok(ev.ttl <= 3);
    await until(() => calls >= 1 || refreshErrors.length > 0, { timeout: 5000, label: 'getToken before expiry' });
    const refreshed = await until(
      () => refreshErrors.find((e) => e.type === 'refresh') ?? (nowSecs() > firstExp + 1 && 'past expiry'),
      { timeout: 8000, label: 'the old expiry to pass' },
    );
    if (refreshed !== 'past expiry' && refreshed.error.code === 104) {
      t.skip('this server has no `refresh` command yet (answered 104 method not found)');
      return;
    }
    assert.equal(refreshed, 'past expiry', `refresh failed: ${refreshed.error?.message}`);
    assert.equal(c.state, 'connected');
    assert.equal(c.clientId, ev.client, 'the same connection: refreshed, not reconnected');
    assert.equal(calls, 1);
  });
});

describe('recovery across a server restart', { skip }, () => {
  test('the resubscribe recovers what was published while the client was away', async () => {
    const storage = tempStorage();
    let node = await Starling.start({ storage: storage.dir });
    // The client's sockets can be held back, so the publishes below surely happen while it is away.
    let gateOpen = true;
    class Gated extends WebSocket {
      constructor(...args) {
        if (!gateOpen) throw new Error('gate closed');
        super(...args);
      }
    }
    const c = new Client(node.ws, { websocket: Gated, protocol: 'msgpack', minReconnectDelay: 20, maxReconnectDelay: 100 });
    try {
      await connect(c);
      const sub = await subscribed(c, 'chat:restart');
      const pubs = collect(sub, 'publication');
      for (let i = 1; i <= 3; i++) await node.api('publish', { channel: 'chat:restart', data: { i } });
      await until(() => pubs.length === 3, { label: 'live publications' });
      const subscribing = nextEvent(sub, 'subscribing');
      gateOpen = false;
      await node.stop();
      assert.equal((await subscribing).code, 4000, 'drained with the shutdown code');
      node = await Starling.start({ storage: storage.dir, port: node.port });
      for (let i = 4; i <= 7; i++) await node.api('publish', { channel: 'chat:restart', data: { i } });
      const resubscribed = nextEvent(sub, 'subscribed', { timeout: 10000 });
      gateOpen = true;
      const ev = await resubscribed;
      assert.equal(ev.wasRecovering, true);
      assert.equal(ev.recovered, true);
      assert.equal(ev.recoveredCount, 4);
      await until(() => pubs.length === 7, { label: 'recovered publications' });
      assert.deepEqual(pubs.map((p) => p.data.i), [1, 2, 3, 4, 5, 6, 7]);
      assert.deepEqual(pubs.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7].map((i) => pubs[0].offset + i - 1));
    } finally {
      c.disconnect();
      await node.kill();
      storage.cleanup();
    }
  });
});

