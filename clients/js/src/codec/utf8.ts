/** UTF-8 helpers shared by the codecs (TextEncoder/TextDecoder exist in every target). */

const encoder = new TextEncoder();
// `fatal`: invalid UTF-8 must be detected (then the bytes are binary data, not text).
const strictDecoder = new TextDecoder('utf-8', { fatal: true });

export function utf8Encode(s: string): Uint8Array {
  return encoder.encode(s);
}

/** Decodes UTF-8; throws on invalid input. */
export function utf8Decode(bytes: Uint8Array): string {
  return strictDecoder.decode(bytes);
}

/**
 * Reads bytes as one JSON value when they are valid UTF-8 JSON (the server's own rule for
 * embedding data in JSON frames), else returns them as they are.
 */
export function bytesToJsonOrBytes(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(utf8Decode(bytes));
  } catch {
    return bytes;
  }
}
