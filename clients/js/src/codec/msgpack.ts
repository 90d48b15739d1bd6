/**
 * A small MessagePack encoder/decoder (https://github.com/msgpack/msgpack/blob/master/spec.md),
 * enough for the Starling protocol and general use: nil, bool, every int format, float32/64,
 * str, bin, array, map (keyed by field name), ext (decoded as {@link Ext}). Integers outside
 * JavaScript's safe range decode to bigint; bigint encodes as (u)int64.
 */
import { utf8Decode, utf8Encode } from './utf8.js';

/** An ext value (type -128..127 and its bytes), for formats this codec does not interpret. */
export class Ext {
  constructor(readonly type: number, readonly data: Uint8Array) {}
}

class Writer {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  pos = 0;

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }

  /** A marker byte followed by a big-endian unsigned of `bytes` bytes. */
  head(marker: number, bytes: 1 | 2 | 4, v: number): void {
    this.ensure(1 + bytes);
    this.buf[this.pos++] = marker;
    if (bytes === 1) this.view.setUint8(this.pos, v);
    else if (bytes === 2) this.view.setUint16(this.pos, v);
    else this.view.setUint32(this.pos, v);
    this.pos += bytes;
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

/** Encodes one value. */
export function encode(value: unknown): Uint8Array {
  return encodeMulti([value]);
}

/** Encodes values back to back (a Starling batch: maps concatenated). */
export function encodeMulti(values: readonly unknown[]): Uint8Array {
  const w = new Writer();
  for (const v of values) write(w, v, 0);
  return w.buf.slice(0, w.pos);
}

function write(w: Writer, v: unknown, depth: number): void {
  if (depth > 512) throw new Error('msgpack: nesting too deep');
  if (v === null || v === undefined) return w.u8(0xc0);
  switch (typeof v) {
    case 'boolean':
      return w.u8(v ? 0xc3 : 0xc2);
    case 'number':
      return writeNumber(w, v);
    case 'bigint':
      return writeBigInt(w, v);
    case 'string':
      return writeStr(w, v);
    case 'object':
      break;
    default:
      throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
  }
  if (v instanceof Uint8Array || v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    const b =
      v instanceof Uint8Array ? v
      : v instanceof ArrayBuffer ? new Uint8Array(v)
      : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    writeLen(w, b.length, 0xc4, 0xc4, 0xc5, 0xc6, -1);
    return w.bytes(b);
  }
  if (v instanceof Ext) {
    const n = v.data.length;
    const fixed: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
    if (fixed[n] !== undefined) w.u8(fixed[n]);
    else writeLen(w, n, 0xc7, 0xc7, 0xc8, 0xc9, -1);
    w.u8(v.type & 0xff);
    return w.bytes(v.data);
  }
  if (Array.isArray(v)) {
    writeLen(w, v.length, 0x90, -1, 0xdc, 0xdd, 16);
    for (const item of v) write(w, item, depth + 1);
    return;
  }
  // A plain object: a map keyed by field name; undefined fields are left out (absent).
  const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
  writeLen(w, entries.length, 0x80, -1, 0xde, 0xdf, 16);
  for (const [k, x] of entries) {
    writeStr(w, k);
    write(w, x, depth + 1);
  }
}

/** Writes a length header: fix format below `fixLimit` (when >= 0), else 8/16/32-bit. */
function writeLen(w: Writer, n: number, fix: number, m8: number, m16: number, m32: number, fixLimit: number): void {
  if (n < fixLimit) w.u8(fix | n);
  else if (m8 >= 0 && n < 0x100) w.head(m8, 1, n);
  else if (n < 0x10000) w.head(m16, 2, n);
  else if (n <= 0xffffffff) w.head(m32, 4, n);
  else throw new RangeError('msgpack: too long');
}

function writeStr(w: Writer, s: string): void {
  const b = utf8Encode(s);
  writeLen(w, b.length, 0xa0, 0xd9, 0xda, 0xdb, 32);
  w.bytes(b);
}

function writeNumber(w: Writer, n: number): void {
  if (!Number.isInteger(n) || !Number.isSafeInteger(n)) {
    // Fractions, NaN, Infinity and integers beyond 2^53 (already inexact): float64.
    w.ensure(9);
    w.buf[w.pos++] = 0xcb;
    w.view.setFloat64(w.pos, n);
    w.pos += 8;
    return;
  }
  if (n >= 0) {
    if (n < 0x80) return w.u8(n);
    if (n < 0x100) return w.head(0xcc, 1, n);
    if (n < 0x10000) return w.head(0xcd, 2, n);
    if (n <= 0xffffffff) return w.head(0xce, 4, n);
    return writeBigInt(w, BigInt(n));
  }
  if (n >= -32) return w.u8(n & 0xff);
  w.ensure(5);
  if (n >= -0x80) {
    w.buf[w.pos++] = 0xd0;
    w.view.setInt8(w.pos, n);
    w.pos += 1;
  } else if (n >= -0x8000) {
    w.buf[w.pos++] = 0xd1;
    w.view.setInt16(w.pos, n);
    w.pos += 2;
  } else if (n >= -0x80000000) {
    w.buf[w.pos++] = 0xd2;
    w.view.setInt32(w.pos, n);
    w.pos += 4;
  } else {
    writeBigInt(w, BigInt(n));
  }
}

function writeBigInt(w: Writer, n: bigint): void {
  if (n >= 0n && n <= 0xffffffffffffffffn) {
    if (n <= 0xffffffffn) return writeNumber(w, Number(n));
    w.ensure(9);
    w.buf[w.pos++] = 0xcf;
    w.view.setBigUint64(w.pos, n);
  } else if (n < 0n && n >= -0x8000000000000000n) {
    if (n >= -0x80000000n) return writeNumber(w, Number(n));
    w.ensure(9);
    w.buf[w.pos++] = 0xd3;
    w.view.setBigInt64(w.pos, n);
  } else {
    throw new RangeError('msgpack: integer out of 64-bit range');
  }
  w.pos += 8;
}

class Reader {
  readonly view: DataView;
  pos = 0;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  need(n: number): number {
    const at = this.pos;
    if (at + n > this.buf.length) throw new RangeError('msgpack: unexpected end of input');
    this.pos += n;
    return at;
  }
  u8(): number { return this.view.getUint8(this.need(1)); }
  u16(): number { return this.view.getUint16(this.need(2)); }
  u32(): number { return this.view.getUint32(this.need(4)); }
  bytes(n: number): Uint8Array {
    const at = this.need(n);
    // A copy, so a decoded bin does not pin (or alias) the whole frame.
    return this.buf.slice(at, at + n);
  }
}

/** Decodes exactly one value; trailing bytes are an error. */
export function decode(input: Uint8Array | ArrayBuffer): unknown {
  const values = decodeMulti(input);
  if (values.length !== 1) throw new RangeError(`msgpack: expected one value, found ${values.length}`);
  return values[0];
}

/** Decodes values concatenated back to back (a Starling batch). */
export function decodeMulti(input: Uint8Array | ArrayBuffer): unknown[] {
  const r = new Reader(input instanceof Uint8Array ? input : new Uint8Array(input));
  const out: unknown[] = [];
  while (r.pos < r.buf.length) out.push(read(r, 0));
  return out;
}

function toNumber(n: bigint): number | bigint {
  return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

function read(r: Reader, depth: number): unknown {
  if (depth > 512) throw new RangeError('msgpack: nesting too deep');
  const m = r.u8();
  if (m < 0x80) return m;
  if (m >= 0xe0) return m - 0x100;
  if (m < 0x90) return readMap(r, m & 0x0f, depth);
  if (m < 0xa0) return readArray(r, m & 0x0f, depth);
  if (m < 0xc0) return utf8Decode(r.bytes(m & 0x1f));
  const v = r.view;
  switch (m) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return r.bytes(r.u8());
    case 0xc5: return r.bytes(r.u16());
    case 0xc6: return r.bytes(r.u32());
    case 0xc7: return readExt(r, r.u8());
    case 0xc8: return readExt(r, r.u16());
    case 0xc9: return readExt(r, r.u32());
    case 0xca: return v.getFloat32(r.need(4));
    case 0xcb: return v.getFloat64(r.need(8));
    case 0xcc: return r.u8();
    case 0xcd: return r.u16();
    case 0xce: return r.u32();
    case 0xcf: return toNumber(v.getBigUint64(r.need(8)));
    case 0xd0: return v.getInt8(r.need(1));
    case 0xd1: return v.getInt16(r.need(2));
    case 0xd2: return v.getInt32(r.need(4));
    case 0xd3: return toNumber(v.getBigInt64(r.need(8)));
    case 0xd4: return readExt(r, 1);
    case 0xd5: return readExt(r, 2);
    case 0xd6: return readExt(r, 4);
    case 0xd7: return readExt(r, 8);
    case 0xd8: return readExt(r, 16);
    case 0xd9: return utf8Decode(r.bytes(r.u8()));
    case 0xda: return utf8Decode(r.bytes(r.u16()));
    case 0xdb: return utf8Decode(r.bytes(r.u32()));
    case 0xdc: return readArray(r, r.u16(), depth);
    case 0xdd: return readArray(r, r.u32(), depth);
    case 0xde: return readMap(r, r.u16(), depth);
    case 0xdf: return readMap(r, r.u32(), depth);
  }
  throw new RangeError('msgpack: reserved marker 0xc1');
}

function readExt(r: Reader, n: number): Ext {
  const type = r.view.getInt8(r.need(1));
  return new Ext(type, r.bytes(n));
}

function readArray(r: Reader, n: number, depth: number): unknown[] {
  // Every element takes at least one byte: refuse lying lengths before allocating.
  if (n > r.buf.length - r.pos) throw new RangeError('msgpack: unexpected end of input');
  const out = new Array<unknown>(n);
  for (let i = 0; i < n; i++) out[i] = read(r, depth + 1);
  return out;
}

function readMap(r: Reader, n: number, depth: number): Record<string, unknown> {
  if (2 * n > r.buf.length - r.pos) throw new RangeError('msgpack: unexpected end of input');
  const out: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) {
    const key = read(r, depth + 1);
    const k = typeof key === 'string' ? key : String(key);
    const value = read(r, depth + 1);
    // A "__proto__" key must be data, not a prototype change.
    if (k === '__proto__') Object.defineProperty(out, k, { value, enumerable: true, writable: true, configurable: true });
    else out[k] = value;
  }
  return out;
}
