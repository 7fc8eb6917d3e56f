// @roost/guest: write Roost channel plugins in JavaScript.
//
// A plugin's entry module default-exports its channel:
//
//   import { reply, noreply } from "@roost/guest";
//
//   export default {
//     intercepts: [],
//     join(topic, payload, socket) {
//       socket.assign("count", 0);
//       return reply.ok({});
//     },
//     handleIn(event, payload, socket) {
//       if (event !== "inc") return noreply();
//       const count = socket.assigns.count + 1;
//       socket.assign("count", count);
//       socket.broadcast("count", { count });
//       return reply.ok({ count });
//     },
//   };
//
// and `roost-js build` (bin/roost-js.js) turns it into a component. Layout:
// outcome.js (reply/noreply/stop), socket.js (the Socket and its kv),
// payload.js (JSON and bytes), adapter.js (the WIT handler), host-0.2.js /
// host-0.1.js (the imports), log.js (host log lines).

export { Outcome, noreply, reply, stop } from "./outcome.js";
export { KvError, Socket } from "./socket.js";
export { log } from "./log.js";
