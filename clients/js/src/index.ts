/** @starling/client: the TypeScript client of the Starling real-time messaging server. */
export { Client, VERSION } from './client.js';
export { Subscription } from './subscription.js';
export {
  ClientErrors,
  DisconnectCodes,
  ServerErrors,
  StarlingError,
  UnauthorizedError,
  shouldReconnect,
} from './errors.js';
export { backoffDelay } from './backoff.js';
export { decode as decodeMsgpack, decodeMulti as decodeMsgpackMulti, encode as encodeMsgpack, encodeMulti as encodeMsgpackMulti, Ext } from './codec/msgpack.js';
export type * from './types.js';
