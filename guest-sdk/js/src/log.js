// Lines in the host's log, tagged by the host with app, plugin and topic:
// `log.info("ada joined")`. The build points `roost-guest:host` at the
// imports of the contract version it builds for.

import { host } from "roost-guest:host";

const line = (level) => (...parts) => host.log(level, parts.map(String).join(" "));

export const log = {
  trace: line("trace"),
  debug: line("debug"),
  info: line("info"),
  warn: line("warn"),
  error: line("error"),
};
