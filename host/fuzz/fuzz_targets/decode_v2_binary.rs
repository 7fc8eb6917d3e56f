//! Fuzzes the V2 binary frame decoder (WebSocket binary opcode, §2.3).
//!
//! Besides "never panics", checks the decoded fields against the spec's
//! layout, that a decoded push re-encodes byte for byte (as a reply, the
//! server frame with the same layout), that the server's push and broadcast
//! frames match §2.3, that V1 refuses binary, and that the (arbitrary UTF-8)
//! topic, event and refs survive a JSON frame (`roost_fuzz::check_binary`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    roost_fuzz::check_binary(data);
});
