// Compiled (no emit) against dist/index.d.ts by bundle.test.mjs: the published types
// must let an application use the whole API under strict settings.
import {
  Client,
  ClientErrors,
  StarlingError,
  UnauthorizedError,
  type ClientOptions,
  type PublicationEvent,
  type Subscription,
  type SubscribedEvent,
} from '../../dist/index.js';

const options: ClientOptions = {
  protocol: 'msgpack',
  getToken: async () => {
    if (Math.random() > 2) throw new UnauthorizedError();
    return 'token';
  },
  minReconnectDelay: 100,
  maxReconnectDelay: 5000,
  offlinePublish: 'queue',
  maxQueuedPublishes: 10,
};
const client = new Client('ws://127.0.0.1:8000/connection/websocket', options);
client.on('connected', (e) => console.log(e.client, e.protocol, e.ttl));
client.on('disconnected', (e) => console.log(e.code, e.reason));
client.on('error', (e) => console.log(e.type, e.error.message));
const sub: Subscription = client.getOrCreateSubscription('chat:lobby', { recover: true });
sub.on('subscribed', (e: SubscribedEvent) => console.log(e.recovered, e.recoveredCount));
sub.on('publication', (e: PublicationEvent) => console.log(e.data, e.offset, e.info?.user));
sub.on('join', (e) => console.log(e.info.client));
sub.subscribe();
async function main(): Promise<void> {
  const r = await sub.publish({ text: 'hi' });
  const page = await sub.history({ limit: 10, since: { offset: r.offset, epoch: r.epoch } });
  const stats = await client.presenceStats('chat:lobby');
  const who = await sub.presence();
  console.log(page.publications.length, stats.numUsers, Object.keys(who.clients));
  try {
    await client.publish('x', 1);
  } catch (e) {
    if (e instanceof StarlingError && e.code === ClientErrors.QUEUE_FULL && e.temporary) return;
  }
}
client.connect();
void main();
