/**
 * JSON encoding: one object per line, several lines per frame. Data is any JSON value; a
 * Uint8Array travels as `b64data` and `b64data` comes back as a Uint8Array.
 */
import { base64Decode, base64Encode } from './base64.js';
import type { Codec, Frame } from './codec.js';
import { utf8Decode } from './utf8.js';

export const jsonCodec: Codec = {
  name: 'json',
  subprotocol: 'starling.json',

  encode(messages) {
    return messages.map((m) => JSON.stringify(m)).join('\n');
  },

  decode(frame: Frame) {
    const text = typeof frame === 'string' ? frame : utf8Decode(frame instanceof Uint8Array ? frame : new Uint8Array(frame));
    // The server writes one object per line and never a raw newline inside one.
    const out: Record<string, unknown>[] = [];
    for (const line of text.split('\n')) {
      if (line.trim() !== '') out.push(JSON.parse(line) as Record<string, unknown>);
    }
    return out;
  },

  putData(obj, name, value) {
    if (value instanceof Uint8Array) obj['b64' + name] = base64Encode(value);
    else obj[name] = value === undefined ? null : value;
  },

  getData(obj, name) {
    const b64 = obj['b64' + name];
    if (typeof b64 === 'string') return base64Decode(b64);
    return obj[name];
  },
};
