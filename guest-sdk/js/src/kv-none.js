// Stands in for kv-0.2.js in plugins that did not ask for storage: their
// component does not import `kv`, and socket.kv says how to enable it.

export const kv = null;
