// The `kv` import of roost:channel@0.2.0, for plugins that ask for storage
// (see host-0.2.js); kv-none.js stands in for the others.

import * as kvNs from "roost:channel/kv@0.2.0";

export const kv = kvNs.default ?? kvNs;
