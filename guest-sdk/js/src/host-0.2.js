// The imports of `roost:channel@0.2.0`, wrapped for socket.js and adapter.js.
//
// Engines expose an interface import differently (StarlingMonkey as named
// exports, QuickJS as a default export), hence `ns.default ?? ns`; and 64-bit
// integers differently (BigInt, number), hence `engine.js`, which the build
// writes for the engine it runs. `kv` comes from `roost-guest:kv`, which the
// build points at kv-0.2.js only when the plugin asks for storage: a
// component imports every interface of its world, and one that imports `kv`
// needs the app's grant.

import * as channelNs from "roost:channel/channel@0.2.0";
import * as contextNs from "roost:channel/context@0.2.0";
import * as logNs from "roost:channel/log@0.2.0";
import * as presenceNs from "roost:channel/presence@0.2.0";
import * as timersNs from "roost:channel/timers@0.2.0";
import { kv } from "roost-guest:kv";
import { bigints } from "roost-guest:engine";

const pick = (ns) => ns.default ?? ns;
const channel = pick(channelNs);
const context = pick(contextNs);
const presence = pick(presenceNs);
const log = pick(logNs);
const timers = pick(timersNs);
const int64 = (n) => (bigints ? BigInt(n) : Number(n));

export const host = {
  push: (event, payload) => channel.push(event, payload),
  broadcast: (topic, event, payload) => channel.broadcast(topic, event, payload),
  broadcastFrom: (topic, event, payload) => channel.broadcastFrom(topic, event, payload),
  nodeName: () => channel.nodeName(),
  track: (key, meta) => presence.track(key, meta),
  untrack: (key) => presence.untrack(key),
  list: () => presence.list(),
  log: (level, message) => log.log(level, message),
  sendAfter(ms, message) {
    try {
      return Number(timers.sendAfter(ms, message));
    } catch (e) {
      throw new Error(`sendAfter refused: ${e && typeof e === "object" && "payload" in e ? e.payload : e}`);
    }
  },
  cancelTimer: (id) => timers.cancelTimer(int64(id)),
  kv: kv && { ...kv, u64: int64, s64: int64 },
  // Thrown to end the call with a trap; see adapter.js.
  crash: (error) => error,
  // Who the running call is for; socket.js reads each field once, if asked.
  context: {
    app: () => context.app(),
    topic: () => context.topic(),
    socketId: () => context.socketId(),
    claims: () => context.claims(),
    assigns: () => context.assigns(),
  },
};
