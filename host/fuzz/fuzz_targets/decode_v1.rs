//! Fuzzes the V1 JSON decoder (`vsn=1.0.0`, text frames).
//!
//! Besides "never panics", checks that `decode(V1, text)` accepts exactly
//! the objects Phoenix's `Message.from_map!` accepts, with the same fields
//! as a generic `serde_json::Value` parse, and that every decoded message
//! survives re-encoding (`roost_fuzz::check_v1_text`). Text frames are UTF-8
//! by the time they reach the decoder, so other inputs are skipped.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        roost_fuzz::check_v1_text(text);
    }
});
