//! Builds the sample plugins (`plugins/`, its own workspace) for
//! `wasm32-wasip2`, so that `cargo run -- serve` and the tests find them in
//! `plugins/target/wasm32-wasip2/release/` on a fresh clone. Installs the
//! target with rustup if it is missing.
//!
//! Also installs the official `phoenix` JS client from the npm registry, as
//! pinned by `host/web/package-lock.json`, into `OUT_DIR`; `src/web/client.rs`
//! embeds its ES module and serves it at `/_roost/phoenix.mjs`.
//!
//! And builds the JS room chat (`plugins/js/room-chat`, routed at `jsroom:*`
//! by the sample config) with the JS SDK's `roost-js build` into its
//! `dist/room_chat.wasm` (gitignored), after an `npm ci` of the SDK
//! (`guest-sdk/js`) when its lock changed. Both are skipped when nothing
//! they read is newer than what they wrote, so a script run for a Rust
//! plugin's change costs them a few `stat`s.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .parent()
        .expect("host/ is inside the workspace")
        .to_owned();
    watch(&root);
    install_phoenix_client(&root.join("host/web"));
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
    build_js_room_chat(&root);
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
            watch_sources(&path);
        }
    }
    // The JS room chat's inputs, file by file: not `plugins/js/room-chat`
    // or `guest-sdk/js` whole, whose `dist/` and `node_modules/` this script
    // writes (a directory's mtime would make every build rerun it).
    for path in JS_SDK_INPUTS
        .iter()
        .map(|p| format!("guest-sdk/js/{p}"))
        .chain(
            JS_ROOM_CHAT_INPUTS
                .iter()
                .map(|p| format!("{JS_ROOM_CHAT}/{p}")),
        )
    {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=ROOST_SKIP_PLUGIN_BUILD");
}

/// The JS room chat's package, and what its build reads there and in the SDK.
const JS_ROOM_CHAT: &str = "plugins/js/room-chat";
const JS_ROOM_CHAT_INPUTS: &[&str] = &["src", "package.json"];
const JS_SDK_INPUTS: &[&str] = &["src", "bin", "wit", "package.json", "package-lock.json"];
/// Where it is built (its package.json's `roost.output`, so `roost dev`
/// finds the package that builds it), relative to the package.
const JS_ROOM_CHAT_OUTPUT: &str = "dist/room_chat.wasm";

/// `npm ci` in `guest-sdk/js` if its lock changed since the last one (the
/// stamp `tests/js/run.sh` also keeps: the lock's SHA-256), then the room
/// chat's `roost-js build --kv` (it keeps its history in storage) if any of
/// its inputs is newer than its output.
fn build_js_room_chat(root: &Path) {
    let sdk = root.join("guest-sdk/js");
    let package = root.join(JS_ROOM_CHAT);
    let lockfile = sdk.join("package-lock.json");
    let lock =
        std::fs::read(&lockfile).unwrap_or_else(|e| panic!("reading {}: {e}", lockfile.display()));
    let hash: String = Sha256::digest(&lock)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stamp = sdk.join("node_modules/.roost-lock-sha256");
    let installed = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash);
    if !installed {
        let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
        let status = Command::new(npm)
            .current_dir(&sdk)
            .args([
                "ci",
                "--prefer-offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .status();
        check_node_tool(status, "npm ci", &sdk);
        std::fs::write(&stamp, format!("{hash}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", stamp.display()));
    }
    let output = package.join(JS_ROOM_CHAT_OUTPUT);
    let inputs = JS_SDK_INPUTS
        .iter()
        .map(|p| sdk.join(p))
        .chain(JS_ROOM_CHAT_INPUTS.iter().map(|p| package.join(p)));
    let built = std::fs::metadata(&output).and_then(|m| m.modified()).ok();
    let stale = match built {
        None => true,
        // A fresh `npm ci` (new engines) also makes the output stale.
        Some(built) => {
            newer_than(&stamp, built) || inputs.into_iter().any(|p| newer_than(&p, built))
        }
    };
    if !stale {
        return;
    }
    let status = Command::new("node")
        .current_dir(&package)
        .arg(sdk.join("bin/roost-js.js"))
        .args(["build", "--kv", "-o", JS_ROOM_CHAT_OUTPUT])
        .status();
    check_node_tool(status, "roost-js build", &package);
}

/// Whether `path`, or any file below it, changed after `than`.
fn newer_than(path: &Path, than: SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        return std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| newer_than(&entry.path(), than));
    }
    meta.modified().is_ok_and(|at| at > than)
}

/// Panics with what to do if a Node.js tool was missing or failed.
fn check_node_tool(status: std::io::Result<std::process::ExitStatus>, what: &str, dir: &Path) {
    match status {
        Ok(status) if status.success() => {}
        Ok(_) => panic!(
            "`{what}` in {} failed (see the output above): the sample config's JS room chat \
             (jsroom:*) is built with the JS SDK, whose packages (pinned in \
             guest-sdk/js/package-lock.json) come from the npm registry or an npm cache that \
             holds them",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{what}` needs Node.js (20.19 or later) with npm, which is not installed: the \
             sample config's JS room chat (jsroom:*) is built with it. On Debian or Ubuntu \
             `apt-get install nodejs npm`, on macOS `brew install node`, or from \
             https://nodejs.org; then build again"
        ),
        Err(e) => panic!("running `{what}` in {}: {e}", dir.display()),
    }
}

/// The file `src/web/client.rs` embeds (with its `.map`), inside
/// `OUT_DIR/web`: the ES module the npm package ships (its `exports.import`).
const PHOENIX_MODULE: &str = "node_modules/phoenix/priv/static/phoenix.mjs";

/// `npm ci` of `web/package.json` and its lock in `OUT_DIR/web`, so the
/// client is the registry's bytes at the pinned version (the lock carries
/// their integrity hash), not a copy kept in the repository.
fn install_phoenix_client(web: &Path) {
    let manifest = web.join("package.json");
    let lockfile = web.join("package-lock.json");
    for file in [&manifest, &lockfile] {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("web");
    let lock =
        std::fs::read(&lockfile).unwrap_or_else(|e| panic!("reading {}: {e}", lockfile.display()));
    // This script also reruns whenever a plugin changes: install only when
    // the lock differs from the one installed last.
    let stamp = out.join("node_modules/.roost-lock");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == lock)
        && out.join(PHOENIX_MODULE).is_file()
    {
        return;
    }
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    for file in [&manifest, &lockfile] {
        let name = file.file_name().expect("a file name");
        std::fs::copy(file, out.join(name))
            .unwrap_or_else(|e| panic!("copying {} into {}: {e}", file.display(), out.display()));
    }
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    let status = Command::new(npm)
        .current_dir(&out)
        .args([
            "ci",
            "--prefer-offline",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(_) => panic!(
            "`npm ci` in {} failed (see the output above): the host embeds the official \
             phoenix client, pinned in host/web/package-lock.json, from the npm registry; \
             it needs access to registry.npmjs.org or an npm cache that holds it",
            out.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "npm is not installed. The host's build fetches the official phoenix JS client \
             with it. Install Node.js (20 or later) with npm: on Debian or Ubuntu \
             `apt-get install nodejs npm`, on macOS `brew install node`, or from \
             https://nodejs.org; then build again"
        ),
        Err(e) => panic!("running npm: {e}"),
    }
    for file in [PHOENIX_MODULE.to_owned(), format!("{PHOENIX_MODULE}.map")] {
        if !out.join(&file).is_file() {
            panic!(
                "the phoenix package installed in {} has no {file}: \
                 check the version pinned in host/web/package.json",
                out.display()
            );
        }
    }
    std::fs::write(&stamp, &lock).unwrap_or_else(|e| panic!("writing {}: {e}", stamp.display()));
}

/// A plugin's directory, but not its `www/`: that page is served from disk
/// (`[apps.X] static`), so editing it needs no build; nor a `target/`, which
/// a plugin made by `roost new` has (a workspace of its own, which `roost
/// dev` builds there on every save).
fn watch_sources(dir: &Path) {
    if !dir.join("www").is_dir() && !dir.join("target").is_dir() {
        println!("cargo:rerun-if-changed={}", dir.display());
        return;
    }
    let entries = std::fs::read_dir(dir).expect("reading a plugin directory");
    for entry in entries.flatten() {
        if entry.file_name() != "www" && entry.file_name() != "target" {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
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
