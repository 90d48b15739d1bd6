// The MessagePack codec: exact encodings at every format boundary, round trips, bad input.
import assert from 'node:assert/strict';
import test from 'node:test';
import { decodeMsgpack as decode, decodeMsgpackMulti as decodeMulti, encodeMsgpack as encode, encodeMsgpackMulti as encodeMulti, Ext } from '../dist/starling.mjs';

const hex = (b) => Buffer.from(b).toString('hex');
const bytes = (n, fill = 7) => new Uint8Array(n).fill(fill);

test('integers use the smallest format at each boundary', () => {
  const cases = [
    [0, '00'], [127, '7f'], [128, 'cc80'], [255, 'ccff'], [256, 'cd0100'], [65535, 'cdffff'],
    [65536, 'ce00010000'], [4294967295, 'ceffffffff'], [4294967296, 'cf0000000100000000'],
    [Number.MAX_SAFE_INTEGER, 'cf001fffffffffffff'],
    [-1, 'ff'], [-32, 'e0'], [-33, 'd0df'], [-128, 'd080'], [-129, 'd1ff7f'], [-32768, 'd18000'],
    [-32769, 'd2ffff7fff'], [-2147483648, 'd280000000'], [-2147483649, 'd3ffffffff7fffffff'],
    [Number.MIN_SAFE_INTEGER, 'd3ffe0000000000001'],
  ];
  for (const [n, want] of cases) {
    assert.equal(hex(encode(n)), want, `encode ${n}`);
    assert.equal(decode(encode(n)), n, `round trip ${n}`);
  }
});

test('uint64 and int64 beyond the safe range decode to bigint, and bigint encodes', () => {
  const max = 0xffffffffffffffffn;
  assert.equal(hex(encode(max)), 'cfffffffffffffffff');
  assert.equal(decode(encode(max)), max);
  const min = -0x8000000000000000n;
  assert.equal(hex(encode(min)), 'd38000000000000000');
  assert.equal(decode(encode(min)), min);
  assert.equal(decode(encode(2n ** 53n)), 2n ** 53n);
  // Small bigints take the small formats and decode to numbers.
  assert.equal(hex(encode(5n)), '05');
  assert.equal(decode(encode(-40000n)), -40000);
  assert.throws(() => encode(2n ** 64n), RangeError);
  assert.throws(() => encode(-(2n ** 63n) - 1n), RangeError);
  // Every int format decodes, also the signed ones holding positive values (other encoders use them).
  assert.equal(decode(Uint8Array.from([0xd0, 0x05])), 5);
  assert.equal(decode(Uint8Array.from([0xd1, 0x01, 0x00])), 256);
  assert.equal(decode(Uint8Array.from([0xd2, 0x00, 0x01, 0x00, 0x00])), 65536);
  assert.equal(decode(Uint8Array.from([0xd3, 0, 0, 0, 0, 0, 0, 0, 9])), 9);
  assert.equal(decode(Uint8Array.from([0xcf, 0, 0, 0, 0, 0, 0, 0, 9])), 9);
});

test('floats, nil and booleans', () => {
  assert.equal(hex(encode(1.5)), 'cb3ff8000000000000');
  assert.equal(decode(encode(-0.1)), -0.1);
  assert.ok(Number.isNaN(decode(encode(NaN))));
  assert.equal(decode(encode(Infinity)), Infinity);
  assert.equal(decode(Uint8Array.from([0xca, 0x3f, 0xc0, 0, 0])), 1.5); // float32
  assert.equal(hex(encode(null)), 'c0');
  assert.equal(hex(encode(undefined)), 'c0');
  assert.equal(hex(encode(true)), 'c3');
  assert.equal(hex(encode(false)), 'c2');
  assert.deepEqual(decode(encode([null, true, false])), [null, true, false]);
});

test('str8/16/32 at their boundaries, with multi-byte UTF-8', () => {
  for (const [len, prefix] of [[0, 'a0'], [31, 'bf'], [32, 'd920'], [255, 'd9ff'], [256, 'da0100'], [65535, 'daffff'], [65536, 'db00010000']]) {
    const s = 'x'.repeat(len);
    const enc = encode(s);
    assert.equal(hex(enc.subarray(0, prefix.length / 2)), prefix, `str of ${len}`);
    assert.equal(enc.length, prefix.length / 2 + len);
    assert.equal(decode(enc), s);
  }
  const text = 'héllo, 世界 🐦';
  const enc = encode(text);
  assert.equal(enc[0], 0xa0 | Buffer.byteLength(text)); // the length counts bytes, not UTF-16 units
  assert.equal(decode(enc), text);
  assert.throws(() => decode(Uint8Array.from([0xa2, 0xff, 0xfe])), TypeError); // invalid UTF-8
});

test('bin8/16/32 at their boundaries, from any byte view', () => {
  for (const [len, prefix] of [[0, 'c400'], [255, 'c4ff'], [256, 'c50100'], [65535, 'c5ffff'], [65536, 'c600010000'], [70000, 'c600011170']]) {
    const b = bytes(len, len % 251);
    const enc = encode(b);
    assert.equal(hex(enc.subarray(0, prefix.length / 2)), prefix, `bin of ${len}`);
    const back = decode(enc);
    assert.ok(back instanceof Uint8Array);
    assert.deepEqual(back, b);
  }
  assert.deepEqual(decode(encode(new Uint16Array([1, 2]).buffer)), new Uint8Array(new Uint16Array([1, 2]).buffer));
  const view = new DataView(Uint8Array.from([9, 8, 7, 6]).buffer, 1, 2);
  assert.deepEqual(decode(encode(view)), Uint8Array.from([8, 7]));
  // A subarray encodes only its own bytes.
  assert.deepEqual(decode(encode(Uint8Array.from([1, 2, 3, 4]).subarray(1, 3))), Uint8Array.from([2, 3]));
});

test('arrays and maps at their boundaries; maps keyed by name; undefined fields left out', () => {
  for (const [len, prefix] of [[0, '90'], [15, '9f'], [16, 'dc0010'], [65536, 'dd00010000']]) {
    const a = Array.from({ length: len }, (_, i) => i % 100);
    const enc = encode(a);
    assert.equal(hex(enc.subarray(0, prefix.length / 2)), prefix);
    assert.deepEqual(decode(enc), a);
  }
  for (const [len, prefix] of [[0, '80'], [15, '8f'], [16, 'de0010'], [65536, 'df00010000']]) {
    const m = {};
    for (let i = 0; i < len; i++) m[`k${i}`] = i;
    const enc = encode(m);
    assert.equal(hex(enc.subarray(0, prefix.length / 2)), prefix);
    assert.deepEqual(decode(enc), m);
  }
  assert.equal(hex(encode({ a: 1, b: undefined })), '81a16101');
});

test('nested maps round trip, as protocol messages do', () => {
  const msg = {
    id: 4294967295,
    subscribe: {
      epoch: 'xcf4w', offset: 2 ** 40, recoverable: true, recovered: true,
      publications: [
        { data: Uint8Array.from([123, 125]), offset: 16, info: { user: '42', client: 'c', conn_info: bytes(3) }, tags: { k: 'v' } },
        { data: new Uint8Array(0), offset: 17 },
      ],
      deep: { a: { b: { c: [{ d: [-1, 1.25, 'e', null] }] } } },
    },
  };
  assert.deepEqual(decode(encode(msg)), msg);
});

test('batches: values back to back', () => {
  const batch = [{ id: 1, connect: {} }, { id: 2, subscribe: { channel: 'a' } }, {}];
  const enc = encodeMulti(batch);
  assert.equal(hex(enc.subarray(enc.length - 1)), '80');
  assert.deepEqual(decodeMulti(enc), batch);
  assert.deepEqual(decodeMulti(new Uint8Array(0)), []);
  assert.throws(() => decode(enc), /expected one value/);
  assert.deepEqual(decodeMulti(enc.buffer.slice(enc.byteOffset, enc.byteOffset + enc.length)), batch); // ArrayBuffer input
});

test('ext values keep their type and bytes; fixext and ext8/16/32', () => {
  for (const n of [1, 2, 4, 8, 16, 3, 300, 70000]) {
    const e = new Ext(-1, bytes(n, 3));
    const back = decode(encode(e));
    assert.ok(back instanceof Ext);
    assert.equal(back.type, -1);
    assert.deepEqual(back.data, e.data);
  }
  assert.equal(hex(encode(new Ext(5, bytes(1, 0xaa)))), 'd405aa');
  assert.equal(hex(encode(new Ext(5, bytes(3, 0xaa)))), 'c70305aaaaaa');
});

test('malformed input is refused, never half-read', () => {
  for (const bad of [[0xc1], [0x92, 0x01], [0xdf, 0xff, 0xff, 0xff, 0xff], [0xdb, 0xff, 0xff, 0xff, 0xff], [0xcd, 0x01], [0xa5, 0x61], [0xc4, 0x02, 0x00], [0x81, 0xa1, 0x61]]) {
    assert.throws(() => decodeMulti(Uint8Array.from(bad)), RangeError, hex(bad));
  }
  // Deep nesting is bounded instead of overflowing the stack.
  assert.throws(() => decodeMulti(new Uint8Array(100000).fill(0x91)), RangeError);
  const deep = [];
  let cur = deep;
  for (let i = 0; i < 1000; i++) cur = cur[0] = [];
  assert.throws(() => encode(deep), /too deep/);
  assert.throws(() => encode(() => 1), TypeError);
});

test('a "__proto__" key is data, not a prototype change', () => {
  const enc = Uint8Array.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa1, 0x78, 0x01]);
  const v = decode(enc);
  assert.equal(Object.getPrototypeOf(v), Object.prototype);
  assert.deepEqual(Object.keys(v), ['__proto__']);
  assert.equal({}.x, undefined);
});

test('non-string map keys decode as strings', () => {
  assert.deepEqual(decode(Uint8Array.from([0x82, 0x01, 0xa1, 0x61, 0xc3, 0x02])), { 1: 'a', true: 2 });
});
