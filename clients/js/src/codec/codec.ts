/**
 * What the client needs from an encoding: framing of batches and the carrying of opaque
 * payloads (`data`, `conn_info`, `chan_info`), which differs between JSON and MessagePack
 * (docs/PROTOCOL.md, "Data payloads").
 */
export type Frame = string | ArrayBuffer | Uint8Array;

export interface Codec {
  /** `json` or `msgpack`. */
  readonly name: 'json' | 'msgpack';
  /** The WebSocket subprotocol that selects this encoding. */
  readonly subprotocol: string;
  /** Encodes a batch of messages into one frame. */
  encode(messages: readonly object[]): string | Uint8Array;
  /** Splits a frame into its messages. */
  decode(frame: Frame): Record<string, unknown>[];
  /** Sets `obj[name]` (or its `b64` twin) to carry `value`. */
  putData(obj: Record<string, unknown>, name: string, value: unknown): void;
  /** Reads the payload carried by `obj[name]` or `obj["b64" + name]`; undefined when absent. */
  getData(obj: Record<string, unknown>, name: string): unknown;
}
