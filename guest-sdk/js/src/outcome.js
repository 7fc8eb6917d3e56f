// What a callback decides: Phoenix's `{:reply, ...}`, `{:noreply, ...}` and
// `{:stop, ...}`, and for `join` `{:ok, reply}` / `{:error, reply}`.
//
//   return reply.ok({ ping: "pong" });          // handleIn: reply ok
//   return reply.error({ reason: "nope" });     // reply error (join: refuse)
//   return noreply();                           // no reply (also: return nothing)
//   return reply.ok({ msg: "bye" }).stop("normal");
//   return stop("shutdown");
//
// adapter.js turns an Outcome into the WIT `outcome` (or, for `join`, the
// `result<joined, payload>`), adding the assigns when the callback changed
// them (socket.js).

export class Outcome {
  /** @param {{status: string, response: unknown} | null} reply */
  constructor(reply = null, stopReason = null) {
    this.reply = reply;
    this.stopReason = stopReason;
  }

  /**
   * Also stops the channel after the reply: `normal`, `shutdown` and
   * `shutdown:<anything>` close it (`phx_close`), any other reason errors
   * it (`phx_error`) and the client rejoins.
   */
  stop(reason) {
    return new Outcome(this.reply, String(reason));
  }
}

/** Replies with any status; `reply.ok` and `reply.error` are the two the official client knows. */
export function reply(status, response) {
  return new Outcome({ status: String(status), response });
}
reply.ok = (response) => reply("ok", response);
reply.error = (response) => reply("error", response);

/** Sends no reply. Returning nothing from a callback means the same. */
export function noreply() {
  return new Outcome();
}

/** Stops the channel without a reply (see `Outcome#stop`). */
export function stop(reason) {
  return noreply().stop(reason);
}
