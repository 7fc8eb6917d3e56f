//! Fuzzes the V2 JSON decoder (`vsn=2.0.0`, text frames).
//!
//! Besides "never panics", checks that `decode(V2, text)` accepts exactly
//! the arrays `[join_ref, ref, topic, event, payload | _]` Phoenix's V2
//! serializer accepts, with the same fields as a generic
//! `serde_json::Value` parse, and that every decoded message survives
//! re-encoding (`roost_fuzz::check_v2_text`). Text frames are UTF-8 by the
//! time they reach the decoder, so other inputs are skipped.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        roost_fuzz::check_v2_text(text);
    }
});
