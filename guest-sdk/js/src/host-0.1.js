// The imports of `roost:channel@0.1.0` (one `host` interface), wrapped as
// host-0.2.js wraps 0.2's, for building against a host that loads only 0.1.
// 0.1 has no timers and no storage: those calls throw.

import * as hostNs from "roost:channel/host@0.1.0";

const h = hostNs.default ?? hostNs;
const missing = (what) => () => {
  throw new Error(`${what} needs roost:channel@0.2.0 (this plugin was built for 0.1.0)`);
};

export const host = {
  push: (event, payload) => h.push(event, payload),
  broadcast: (topic, event, payload) => h.broadcast(topic, event, payload),
  broadcastFrom: (topic, event, payload) => h.broadcastFrom(topic, event, payload),
  nodeName: () => h.nodeName(),
  track: (key, meta) => h.presenceTrack(key, meta),
  untrack: (key) => h.presenceUntrack(key),
  list: () => h.presenceList(),
  log: (level, message) => h.log(level, message),
  sendAfter: missing("sendAfter"),
  cancelTimer: missing("cancelTimer"),
  kv: null,
  crash: (error) => error,
};
