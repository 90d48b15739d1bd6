// Data payloads on each encoding (docs/PROTOCOL.md, "Data payloads").
import assert from 'node:assert/strict';
import test from 'node:test';
import { jsonCodec } from '../dist/codec/json.js';
import { msgpackCodec } from '../dist/codec/msgpack-codec.js';

const utf8 = (s) => new TextEncoder().encode(s);

test('JSON: data is any JSON value; a Uint8Array travels as b64data and comes back as bytes', () => {
  const p = {};
  jsonCodec.putData(p, 'data', { text: 'hi' });
  assert.deepEqual(p, { data: { text: 'hi' } });
  const b = {};
  jsonCodec.putData(b, 'data', Uint8Array.from([0, 1, 255]));
  assert.deepEqual(b, { b64data: 'AAH/' });
  assert.deepEqual(jsonCodec.getData({ b64data: 'AAH/' }, 'data'), Uint8Array.from([0, 1, 255]));
  assert.deepEqual(jsonCodec.getData({ b64data: 'AAE' }, 'data'), Uint8Array.from([0, 1]), 'unpadded base64');
  assert.deepEqual(jsonCodec.getData({ b64conn_info: 'AAE=' }, 'conn_info'), Uint8Array.from([0, 1]));
  assert.equal(jsonCodec.getData({ data: 0 }, 'data'), 0);
  assert.equal(jsonCodec.getData({}, 'data'), undefined);
  const u = {};
  jsonCodec.putData(u, 'data', undefined);
  assert.deepEqual(u, { data: null });
});

test('JSON: frames are one object per line; blank lines and \\r\\n are tolerated', () => {
  assert.equal(jsonCodec.encode([{ id: 1, ping: {} }, { id: 2, ping: {} }]), '{"id":1,"ping":{}}\n{"id":2,"ping":{}}');
  assert.deepEqual(jsonCodec.decode('{"id":1}\r\n\n{"push":{"channel":"a"}}\n'), [{ id: 1 }, { push: { channel: 'a' } }]);
  assert.deepEqual(jsonCodec.decode(utf8('{"id":1}').buffer), [{ id: 1 }]);
});

test('MessagePack: values travel as JSON text in UTF-8 bytes, bytes as they are', () => {
  const c = msgpackCodec(false);
  const p = {};
  c.putData(p, 'data', { text: 'héllo' });
  assert.deepEqual(p.data, utf8('{"text":"héllo"}'));
  const raw = Uint8Array.from([0xff, 0]);
  const b = {};
  c.putData(b, 'data', raw);
  assert.equal(b.data, raw);
  // Incoming: JSON bytes become the value (as a JSON client would get it), others stay bytes.
  assert.deepEqual(c.getData({ data: utf8(' {"a":[1,2]} ') }, 'data'), { a: [1, 2] });
  assert.deepEqual(c.getData({ data: raw }, 'data'), raw);
  assert.deepEqual(c.getData({ data: utf8('not json') }, 'data'), utf8('not json'));
  assert.deepEqual(c.getData({ data: new Uint8Array(0) }, 'data'), new Uint8Array(0));
  assert.deepEqual(c.getData({ data: '"s"' }, 'data'), 's', 'a str payload follows the same rule');
  assert.deepEqual(c.decode(c.encode([{ id: 1, publish: p }])), [{ id: 1, publish: { data: utf8('{"text":"héllo"}') } }]);
  assert.throws(() => c.decode('{}'), /text frame/);
});

test('MessagePack with rawData: payloads stay bytes', () => {
  const c = msgpackCodec(true);
  assert.deepEqual(c.getData({ data: utf8('{"a":1}') }, 'data'), utf8('{"a":1}'));
  assert.deepEqual(c.getData({ data: 'x' }, 'data'), utf8('x'));
});
