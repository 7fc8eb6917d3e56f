//! Builds the sample plugins (`plugins/`, its own workspace) for
//! `wasm32-wasip2`, so that `cargo run -- serve` and the tests find them in
//! `plugins/target/wasm32-wasip2/release/` on a fresh clone. Installs the
//! target with rustup if it is missing.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .parent()
        .expect("host/ is inside the workspace")
        .to_owned();
    watch(&root);
    if env::var_os("ROOST_SKIP_PLUGIN_BUILD").is_some() {
        return;
    }
    ensure_target();

    let plugins = root.join("plugins");
    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&plugins)
        .args(["build", "--release", "--target", TARGET])
        .env("CARGO_TARGET_DIR", plugins.join("target"));
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("running cargo for the plugins");
    if !status.success() {
        panic!(
            "building the plugins in {} failed (see the output above)",
            plugins.display()
        );
    }
}

/// Rebuild when plugin sources, the SDK or the WIT change — but not when the
/// plugins' own target directory does, nor `plugins/js` (npm projects, not
/// crates of the plugins workspace; their builds write `dist/` there).
fn watch(root: &Path) {
    for path in [
        "wit",
        "guest-sdk/src",
        "guest-sdk/Cargo.toml",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let entries = std::fs::read_dir(root.join("plugins")).expect("reading plugins/");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && entry.file_name() != "target" && entry.file_name() != "js" {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-env-changed=ROOST_SKIP_PLUGIN_BUILD");
}

fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if !installed {
        let status = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            panic!("the {TARGET} target is missing and `rustup target add {TARGET}` failed");
        }
    }
}
