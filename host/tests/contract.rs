//! The contract has one text: the guest SDK vendors `wit/channel.wit` (so
//! the crate builds outside this repository), and the copy must be the
//! contract the host binds, byte for byte.

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn the_rust_sdk_vendors_the_contract_the_host_binds() {
    assert_eq!(
        read("guest-sdk/wit/channel.wit"),
        read("wit/channel.wit"),
        "guest-sdk/wit/channel.wit differs from wit/channel.wit: copy it over"
    );
}
