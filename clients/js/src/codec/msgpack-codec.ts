/**
 * MessagePack encoding: maps back to back in binary frames. The server carries data as
 * bytes; by default the client sends a value as its JSON text in UTF-8 (a Uint8Array as
 * it is) and reads bytes that are JSON back as the value, so JSON and MessagePack clients
 * see the same data. With `rawData` payloads are handed over as Uint8Array untouched.
 */
import type { Codec, Frame } from './codec.js';
import { decodeMulti, encodeMulti } from './msgpack.js';
import { bytesToJsonOrBytes, utf8Encode } from './utf8.js';

export function msgpackCodec(rawData: boolean): Codec {
  return {
    name: 'msgpack',
    subprotocol: 'starling.msgpack',

    encode(messages) {
      return encodeMulti(messages);
    },

    decode(frame: Frame) {
      if (typeof frame === 'string') throw new TypeError('text frame on a MessagePack connection');
      return decodeMulti(frame) as Record<string, unknown>[];
    },

    putData(obj, name, value) {
      obj[name] = value instanceof Uint8Array ? value : utf8Encode(JSON.stringify(value === undefined ? null : value));
    },

    getData(obj, name) {
      const v = obj[name];
      if (rawData) return typeof v === 'string' ? utf8Encode(v) : v;
      if (v instanceof Uint8Array) return bytesToJsonOrBytes(v);
      // A str is also allowed for data: the same rule on its UTF-8 bytes.
      if (typeof v === 'string') return bytesToJsonOrBytes(utf8Encode(v));
      return v;
    },
  };
}
