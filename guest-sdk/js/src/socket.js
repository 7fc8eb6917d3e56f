// One callback's view of a joined channel: Phoenix's `socket`.
//
// A Socket is made by adapter.js for each call and is dead once the call
// returns: a channel's lasting state is its assigns, which the host stores
// and hands back on the next call. The context (topic, claims, assigns, ...)
// is read from the host only when asked for, once per call, so a callback
// that never reads the claims does not pay for them. Host calls go straight
// to the imports (`host`, from host-0.2.js or host-0.1.js); the host applies
// pushes and broadcasts in call order when the callback returns.

import { encode, parseObject } from "./payload.js";

export class Socket {
  /**
   * @param {object} host  the imports, wrapped by host-0.2.js / host-0.1.js
   * @param {object} ctx   `{ app(), topic(), socketId(), claims(), assigns() }`
   */
  constructor(host, ctx) {
    this._host = host;
    this._ctx = ctx;
    this._cache = {};
    this._assigns = null;
    // Whether `assign` was called: the outcome carries the assigns back only
    // then, so the host stores nothing new for a callback that changed none.
    this._assignsChanged = false;
    this._kv = null;
  }

  _read(name) {
    if (!(name in this._cache)) this._cache[name] = this._ctx[name]();
    return this._cache[name];
  }

  /** The app's name from the server config. */
  get app() {
    return this._read("app");
  }

  /** The channel's topic, e.g. `room:lobby`. */
  get topic() {
    return this._read("topic");
  }

  /** The socket's id (`users_socket:<sub>`) when its token carries `sub`, else null. */
  get socketId() {
    return this._read("socketId") ?? null;
  }

  /** The verified token claims: an object, `{}` for anonymous sockets. */
  get claims() {
    if (!("claimsValue" in this._cache)) this._cache.claimsValue = parseObject(this._read("claims"));
    return this._cache.claimsValue;
  }

  /** This channel's state: an object, `{}` until the first `assign`. */
  get assigns() {
    if (this._assigns === null) this._assigns = parseObject(this._read("assigns"));
    return this._assigns;
  }

  /** Sets `assigns[key]`; the host keeps the new assigns for every later call. */
  assign(key, value) {
    this.assigns[key] = value;
    this._assignsChanged = true;
    return this;
  }

  /** The assigns as JSON text if `assign` was called, else null (keep them). */
  changedAssigns() {
    return this._assignsChanged ? JSON.stringify(this._assigns) : null;
  }

  /** Sends `event` to this channel's client only. */
  push(event, payload) {
    this._host.push(event, encode(payload));
  }

  /** Sends `event` to every subscriber of this channel's topic, this client included. */
  broadcast(event, payload) {
    this.broadcastTo(this.topic, event, payload);
  }

  /** Sends `event` to every subscriber of `topic` (a topic of this app). */
  broadcastTo(topic, event, payload) {
    this._host.broadcast(topic, event, encode(payload));
  }

  /** As `broadcast`, skipping this channel's client. */
  broadcastFrom(event, payload) {
    this._host.broadcastFrom(this.topic, event, encode(payload));
  }

  /**
   * Tracks `key` as present on this topic with `meta` (an object), as
   * Phoenix.Presence.track: the host adds `phx_ref` and broadcasts a
   * `presence_diff`. The entry leaves by itself with the channel.
   */
  track(key, meta = {}) {
    this._host.track(key, JSON.stringify(meta));
  }

  /** Stops tracking `key` for this channel. */
  untrack(key) {
    this._host.untrack(key);
  }

  /** The topic's presences: `{ key: { metas: [{ phx_ref, ...meta }] } }`, what this call tracked included. */
  presenceList() {
    return parseObject(this._host.list());
  }

  /** Pushes the topic's presences to this client as `presence_state` (call it in `join`, after `track`). */
  pushPresenceState() {
    // The host's JSON text goes back as it is: no parse, no re-encode.
    this._host.push("presence_state", { tag: "json", val: this._host.list() });
  }

  /** This server's node name from the config. */
  nodeName() {
    return this._host.nodeName();
  }

  /**
   * Calls `handleInfo(message, socket)` on this channel after `ms`
   * milliseconds (0: once this callback's effects are applied, before the
   * next client message). `message` is any JSON value (sent as JSON text,
   * as the Rust SDK does). Returns the timer's id (a number) for
   * `cancelTimer`; throws when the channel has too many timers pending.
   */
  sendAfter(ms, message) {
    return this._host.sendAfter(ms, JSON.stringify(message === undefined ? null : message));
  }

  /** Cancels a pending timer; false if it already fired or never existed. */
  cancelTimer(id) {
    return this._host.cancelTimer(id);
  }

  /**
   * The app's key-value storage (values are bytes; `getJson`/`setJson` for
   * JSON). Needs `"roost": { "capabilities": ["kv"] }` in the plugin's
   * package.json and `kv = true` in the app's config.
   */
  get kv() {
    if (this._kv === null) this._kv = new Kv(this._host.kv);
    return this._kv;
  }
}

/** A failed storage call: `kind` is `quota`, `unavailable` or `invalid`. */
export class KvError extends Error {
  constructor(kind, message) {
    super(`kv ${kind}: ${message}`);
    this.name = "KvError";
    this.kind = kind;
    this.detail = message;
  }
}

// QuickJS has no TextEncoder/TextDecoder; StarlingMonkey has both.
const utf8 = {
  encode: (s) => (typeof TextEncoder === "function" ? new TextEncoder().encode(s) : encodeUtf8(s)),
  decode: (b) => (typeof TextDecoder === "function" ? new TextDecoder().decode(b) : decodeUtf8(b)),
};

function encodeUtf8(s) {
  const bytes = [];
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c < 0x80) bytes.push(c);
    else if (c < 0x800) bytes.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else bytes.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(bytes);
}

function decodeUtf8(bytes) {
  // Percent-decoding is UTF-8 decoding; invalid sequences throw, as
  // TextDecoder with `fatal` would.
  let escaped = "";
  for (const b of bytes) escaped += `%${b.toString(16).padStart(2, "0")}`;
  return decodeURIComponent(escaped);
}

class Kv {
  constructor(imports) {
    this._kv = imports;
  }

  /** The kv imports, or a clear error when the plugin was built without them. */
  _imports() {
    if (!this._kv) {
      throw new Error('kv is not enabled for this plugin: add "roost": { "capabilities": ["kv"] } to its package.json');
    }
    return this._kv;
  }

  _call(name, ...args) {
    const kv = this._imports();
    try {
      return kv[name](...args);
    } catch (e) {
      // Engines throw a `result` error as the error value itself or wrapped
      // in an Error with `payload`.
      const err = e && typeof e === "object" && "payload" in e ? e.payload : e;
      if (err && typeof err === "object" && "tag" in err) throw new KvError(err.tag, err.val);
      throw e;
    }
  }

  /** The value of `key` (a Uint8Array), or null if unset or expired. */
  get(key) {
    const value = this._call("get", key);
    return value === undefined || value === null ? null : Uint8Array.from(value);
  }

  /** The value of `key` as text, or null. */
  getText(key) {
    const value = this.get(key);
    return value === null ? null : utf8.decode(value);
  }

  /** The value of `key` parsed as JSON, or null. */
  getJson(key) {
    const value = this.getText(key);
    return value === null ? null : JSON.parse(value);
  }

  /** Several values at once, in order (null where unset). */
  getMany(keys) {
    return this._call("getMany", keys).map((v) => (v === undefined || v === null ? null : Uint8Array.from(v)));
  }

  /** Sets `key` to bytes or text; `{ ttlMs }` makes it expire. */
  set(key, value, { ttlMs } = {}) {
    const bytes = typeof value === "string" ? utf8.encode(value) : value;
    this._call("set", key, bytes, ttlMs === undefined ? undefined : this._imports().u64(ttlMs));
  }

  /** Sets `key` to `value` as JSON. */
  setJson(key, value, options) {
    this.set(key, JSON.stringify(value), options);
  }

  /** Deletes `key`; true if it was set. */
  delete(key) {
    return this._call("delete", key);
  }

  /** Adds `delta` (default 1) to the integer at `key` (0 if unset), atomically; returns the new value. */
  increment(key, delta = 1) {
    return Number(this._call("increment", key, this._imports().s64(delta)));
  }

  /** Up to `limit` keys starting with `prefix`, in byte order, after `after`. */
  listKeys(prefix = "", { after, limit = 100 } = {}) {
    return this._call("listKeys", prefix, after, limit);
  }
}
