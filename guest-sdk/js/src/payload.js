// Message bodies between the WIT `payload` variant and plain JS values.
//
// A callback sees a JSON payload as the parsed value and a binary one (a V2
// binary frame) as a Uint8Array; whatever it sends goes back the same way:
// a Uint8Array or ArrayBuffer as binary, anything else as JSON text. Used by
// socket.js (push, broadcast) and outcome.js (replies); adapter.js decodes
// what the host passes in.

/** The WIT payload for a JS value: bytes stay bytes, the rest is JSON. */
export function encode(value) {
  if (value instanceof Uint8Array) return { tag: "binary", val: value };
  if (value instanceof ArrayBuffer) return { tag: "binary", val: new Uint8Array(value) };
  // `undefined` (a callback that replies with nothing) is an empty object,
  // as the Rust SDK's default reply is, never the text "undefined".
  return { tag: "json", val: value === undefined ? "{}" : JSON.stringify(value) };
}

/**
 * The JS value of a WIT payload. JSON text that does not parse (the host
 * validates frames, so it should not happen) reads as null, not a crash,
 * as in the Rust SDK.
 */
export function decode(payload) {
  if (payload.tag === "binary") return toBytes(payload.val);
  return parseOr(payload.val, null);
}

/** Parses JSON text, `fallback` if it does not parse. */
export function parseOr(text, fallback) {
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}

/** Parses claims, assigns or presence text: `{}` unless it is a JSON object. */
export function parseObject(text) {
  const value = parseOr(text, null);
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
}

// Engines hand `list<u8>` over as a Uint8Array or a plain array.
function toBytes(val) {
  return val instanceof Uint8Array ? val : Uint8Array.from(val);
}
