// A minimal in-memory Web Storage (getItem/setItem/removeItem/clear).
//
// The phoenix client remembers a long-poll fallback in `sessionStorage`
// (key "phx:fallback:LongPoll"), which browsers have and Node does not.
// `installSessionStorage()` provides one as the global `sessionStorage`, so
// the client's real fallback code path (socket.js connectWithFallback) runs
// unchanged; it is the only shim the suite adds to Node.

export class MemoryStorage {
  constructor() {
    this.items = new Map();
  }
  get length() {
    return this.items.size;
  }
  key(i) {
    return [...this.items.keys()][i] ?? null;
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.items.set(String(key), String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
  clear() {
    this.items.clear();
  }
}

/** Installs `globalThis.sessionStorage` if Node lacks it; returns it. */
export function installSessionStorage() {
  if (typeof globalThis.sessionStorage === "undefined") {
    Object.defineProperty(globalThis, "sessionStorage", {
      value: new MemoryStorage(),
      configurable: true,
      writable: true,
    });
  }
  return globalThis.sessionStorage;
}
