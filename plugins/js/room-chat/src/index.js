// The room chat channel in JavaScript (routes `jsroom:*` in the sample
// config): a port of plugins/room-chat (Rust) that sends the same frames, byte
// for byte, for join, `message:add`, `new_msg` and presence. A chat room per
// topic; the user's name comes from the token (`username`, else `sub`) or
// the join payload (`username`); named users are tracked in presence (key =
// username, meta `{"online_at": <ms>}`) and every joining client gets the
// room's `presence_state`. Anonymous readers are not listed: a large
// audience would make every join announce itself to the whole room.
//
// Keys are written in the order serde_json writes them (sorted), so the JSON
// text matches the Rust plugin's.

import { noreply, reply } from "@roost/guest";

export default {
  join(topic, payload, socket) {
    // The room's id: what follows the prefix (`room:`, `jsroom:`), so both
    // plugins name their events alike.
    const colon = topic.indexOf(":");
    const roomId = colon < 0 ? topic : topic.slice(colon + 1);
    const username = usernameOf(socket.claims, payload);
    if (username !== null) socket.track(username, { online_at: Date.now() });
    // Lists the user just tracked too; pushed after the join reply.
    socket.pushPresenceState();
    socket.assign("room_id", roomId);
    socket.assign("username", username ?? "anonymous");
    return reply.ok({ channel: topic });
  },

  handleIn(event, payload, socket) {
    switch (event) {
      case "message:add": {
        const { room_id: roomId, username } = socket.assigns;
        socket.broadcast(`room:${typeof roomId === "string" ? roomId : ""}:new_message`, {
          content: field(payload, "message"),
          user: { username: username ?? null },
        });
        return reply.ok({});
      }
      case "new_msg":
        socket.broadcast("new_msg", { body: field(payload, "body") });
        return reply.ok({});
      default:
        return noreply();
    }
  },
};

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
