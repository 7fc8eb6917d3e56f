// The room chat channel in JavaScript (routes `jsroom:*` in the test
// configs): a port of plugins/room-chat (Rust) that sends the same frames,
// byte for byte — join, `message:add`, `new_msg`, the history and presence.
//
// A chat room per topic; the user's name comes from the token (`username`,
// else `sub`) or the join payload (`username`). Messages are stored in the
// app's key-value storage (`{"id", "content"|"body", "user", "at"}`, ids
// counting up per room, the last 100 kept). Right after the join reply (a
// zero-delay timer, as Phoenix's `send(self(), :after_join)`) the channel
// pushes `history` — the last 50, or those after the join's `last_seen_id`
// — then tracks a named user (key = username, meta `{"online_at": <ms>}`)
// and pushes the room's `presence_state`. Anonymous readers are not listed.
//
// Keys are written in the order serde_json writes them (sorted), so the
// JSON text matches the Rust plugin's.

import { log, noreply, reply } from "@roost/guest";

/** Messages a join sends back, and messages kept per room. */
const HISTORY = 50;
const KEPT = 100;

export default {
  join(topic, payload, socket) {
    // The room's id: what follows the prefix (`room:`, `jsroom:`), so both
    // plugins name their events and keys alike.
    const colon = topic.indexOf(":");
    const roomId = colon < 0 ? topic : topic.slice(colon + 1);
    const username = usernameOf(socket.claims, payload);
    socket.assign("named", username !== null);
    socket.assign("room_id", roomId);
    socket.assign("username", username ?? "anonymous");
    const seen = field(payload, "last_seen_id");
    if (Number.isInteger(seen) && seen >= 0) socket.assign("last_seen_id", seen);
    try {
      socket.sendAfter(0, "after_join");
    } catch {
      // No timer to spare: the pushes still follow the join reply.
      afterJoin(socket);
    }
    return reply.ok({ channel: topic });
  },

  handleIn(event, payload, socket) {
    const { room_id: roomId = "", username = null } = socket.assigns;
    const user = { username };
    switch (event) {
      case "message:add": {
        const content = field(payload, "message");
        remember(socket, roomId, "content", content, user);
        socket.broadcast(`room:${roomId}:new_message`, { content, user });
        return reply.ok({});
      }
      case "new_msg": {
        const body = field(payload, "body");
        remember(socket, roomId, "body", body, user);
        socket.broadcast("new_msg", { body });
        return reply.ok({});
      }
      default:
        return noreply();
    }
  },

  handleInfo(message, socket) {
    if (message === "after_join") afterJoin(socket);
    return noreply();
  },
};

/** What a join sends after its reply: the history, then presence. */
function afterJoin(socket) {
  const { room_id: roomId = "", username, named, last_seen_id: lastSeen } = socket.assigns;
  socket.push("history", { messages: history(socket, roomId, lastSeen) });
  if (named === true) socket.track(username, { online_at: Date.now() });
  // Lists the user just tracked too.
  socket.pushPresenceState();
}

/** Stores a message under the room's next id (best effort). */
function remember(socket, roomId, fieldName, text, user) {
  try {
    const id = socket.kv.increment(seqKey(roomId), 1);
    // Sorted keys, as serde_json writes them: at, body|content, id, user.
    const entry = { at: Date.now(), [fieldName]: text, id, user };
    socket.kv.setJson(messageKey(roomId, id), sorted(entry));
    if (id > KEPT) socket.kv.delete(messageKey(roomId, id - KEPT));
  } catch (error) {
    log.warn(`room ${roomId}: message not stored: ${error.message}`);
  }
}

/** The last HISTORY messages of the room, oldest first, or those after `lastSeen`. */
function history(socket, roomId, lastSeen) {
  try {
    const last = Number(socket.kv.getJson(seqKey(roomId)) ?? 0);
    const first = Math.max(last + 1 - HISTORY, Number.isInteger(lastSeen) ? lastSeen + 1 : 1, 1);
    if (first > last) return [];
    const keys = [];
    for (let id = first; id <= last; id++) keys.push(messageKey(roomId, id));
    return socket.kv
      .getMany(keys)
      .filter((bytes) => bytes !== null)
      .map((bytes) => JSON.parse(decode(bytes)));
  } catch (error) {
    log.warn(`room ${roomId}: history not read: ${error.message}`);
    return [];
  }
}

const seqKey = (roomId) => `room:${roomId}:seq`;
/** Zero-padded, so keys sort in id order. */
const messageKey = (roomId, id) => `room:${roomId}:msg:${String(id).padStart(20, "0")}`;

/** An object with its keys in sorted order (serde_json's). */
function sorted(object) {
  return Object.fromEntries(Object.keys(object).sort().map((k) => [k, object[k]]));
}

/** UTF-8 bytes to text (QuickJS has no TextDecoder). */
function decode(bytes) {
  let escaped = "";
  for (const b of bytes) escaped += `%${b.toString(16).padStart(2, "0")}`;
  return decodeURIComponent(escaped);
}

/** `payload[key]` as serde_json indexes: null unless an object has it. */
function field(payload, key) {
  const isObject = payload !== null && typeof payload === "object" && !(payload instanceof Uint8Array) && !Array.isArray(payload);
  return isObject && key in payload ? payload[key] : null;
}

/** The token's `username` or `sub` claim, else the payload's `username`: the first that is a string. */
function usernameOf(claims, payload) {
  for (const value of [claims.username, claims.sub, field(payload, "username")]) {
    if (typeof value === "string") return value;
  }
  return null;
}
