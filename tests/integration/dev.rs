//! `roost dev`: a scaffolded plugin's source is edited under a running
//! server, which rebuilds it and serves the new code on the same socket,
//! assigns kept; a broken edit leaves the last good version serving, with
//! the compiler's message in the status API.
//!
//! The JS test builds with the checkout's SDK (`guest-sdk/js`, installed by
//! the host's build script), ~2 s a build. The Rust test builds into the
//! sample plugins' target directory (`plugins/target`, warm from the host's
//! build script), so only the crate and `roost-guest` compile, with the
//! package's own release profile (`exact_profile`: the quick one would
//! compile every dependency once more).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use roost_host::config::Config;
use roost_host::dev::{Dev, Rebuilt, RustBuild};
use roost_host::scaffold::{self, Lang};
use roost_tests::{Client, TestServer};
use serde_json::Value;
use tokio::sync::broadcast;

/// How long a test waits for a build (a cold one included) and its swap.
const BUILD_WAIT: Duration = Duration::from_secs(180);

const API_KEY: &str = "dev-test-api-key-0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

/// A config routing `topic` to `plugin`, written into `dir`.
fn write_config(dir: &Path, topic: &str, plugin: &Path) -> PathBuf {
    let config = dir.join("roost.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncache_dir = \"\"\n\n[apps.demo]\nmount = \"/socket\"\napi_keys = [\"value:{API_KEY}\"]\n[apps.demo.routes]\n\"{topic}\" = \"{}\"\n",
            plugin.display()
        ),
    )
    .expect("write config");
    config
}

/// Starts the server and `dev` on `config`, as `roost dev` does.
async fn start(
    config: &Path,
    rust: RustBuild,
) -> (TestServer, broadcast::Receiver<Rebuilt>, usize) {
    let mut config = Config::load(config).expect("config loads");
    let dev = Dev::prepare(&mut config, rust)
        .await
        .expect("dev finds and builds the plugin");
    assert_eq!(dev.projects().count(), 1, "the plugin's project is found");
    let builds = dev.subscribe();
    let server = TestServer::start(config).await;
    let first_builds = dev
        .start(
            server.server().apps().clone(),
            server.server().tasks().clone(),
        )
        .expect("dev watches");
    (server, builds, first_builds)
}

/// Replaces `file`'s text as an editor's save does (write, then rename).
fn save(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp-save");
    std::fs::write(&tmp, text).expect("write source");
    std::fs::rename(&tmp, file).expect("rename source");
}

/// The next build that finishes.
async fn next_build(builds: &mut broadcast::Receiver<Rebuilt>) -> Rebuilt {
    tokio::time::timeout(BUILD_WAIT, builds.recv())
        .await
        .expect("a build within the timeout")
        .expect("dev is running")
}

/// Pings until the reply has the new code's `v`, on the same socket; returns
/// that reply.
async fn ping_until(client: &mut Client, topic: &str, want: &str) -> Value {
    let started = std::time::Instant::now();
    for n in 10.. {
        client
            .send(&format!(r#"["1","{n}","{topic}","ping",{{}}]"#))
            .await;
        let frame: Value = serde_json::from_str(&client.recv_text().await).expect("json frame");
        assert_eq!(frame[3], "phx_reply", "{frame}");
        let reply = frame[4]["response"].clone();
        if reply["v"] == want {
            return reply;
        }
        assert!(
            started.elapsed() < BUILD_WAIT,
            "no reply from the new code: {frame}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

async fn status_of(server: &TestServer) -> Value {
    let response = reqwest::Client::new()
        .get(server.url("/api/apps/demo/status"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .send()
        .await
        .expect("status");
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json")
}

/// Runs the edit → live → broken edit sequence on a joined channel.
async fn edit_and_break(
    server: &TestServer,
    builds: &mut broadcast::Receiver<Rebuilt>,
    topic: &str,
    source: &Path,
    edit: (&str, &str),
    broken: &str,
) {
    let mut client = server.connect_v2().await;
    client
        .call(
            &format!(r#"["1","1","{topic}","phx_join",{{}}]"#),
            &format!(
                r#"["1","1","{topic}","phx_reply",{{"response":{{"topic":"{topic}"}},"status":"ok"}}]"#
            ),
        )
        .await;
    client
        .call(
            &format!(r#"["1","2","{topic}","ping",{{}}]"#),
            &format!(
                r#"["1","2","{topic}","phx_reply",{{"response":{{"pong":1}},"status":"ok"}}]"#
            ),
        )
        .await;

    // An edit: the same socket and channel get the new code, and the count
    // in the assigns carries on.
    let original = std::fs::read_to_string(source).expect("read source");
    assert!(
        original.contains(edit.0),
        "the scaffold changed: {original}"
    );
    save(source, &original.replace(edit.0, edit.1));
    let built = next_build(builds).await;
    assert!(built.error.is_none(), "{:?}", built.error);
    let reply = ping_until(&mut client, topic, "2").await;
    assert!(reply["pong"].as_i64() >= Some(2), "assigns kept: {reply}");

    // A broken edit: the build fails, the error is in the status API, and
    // the last good version keeps serving.
    let good = std::fs::read_to_string(source).expect("read source");
    save(source, &format!("{good}\n{broken}\n"));
    let failed = next_build(builds).await;
    let error = failed.error.expect("the broken edit fails to build");
    let status = status_of(server).await;
    let plugin = &status["plugins"][0];
    let last_error = plugin["last_error"].as_str().unwrap_or_default();
    assert!(last_error.starts_with("build failed"), "{status}");
    assert_eq!(last_error, error);
    let reply = ping_until(&mut client, topic, "2").await;
    assert!(reply["pong"].as_i64() >= Some(3), "{reply}");
    let memory = plugin["warm_memory_bytes"][0].as_u64().unwrap_or_default();
    assert!(memory >= 65_536, "{status}");
    client.expect_silence().await;
}

#[tokio::test]
async fn dev_rebuilds_a_js_plugin_on_save_and_keeps_serving_through_a_broken_edit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let made = scaffold::create_with_sdk(
        "counter",
        Lang::Js,
        None,
        &dir.path().join("counter"),
        &repo().join("guest-sdk/js"),
    )
    .expect("scaffold");
    // Not built yet: `dev` builds it before the server loads the config.
    assert!(!made.output.exists());
    let config = write_config(dir.path(), "counter:*", &made.output);
    let (server, mut builds, first_builds) = start(&config, RustBuild::default()).await;
    assert_eq!(first_builds, 0, "dev built it just now");
    edit_and_break(
        &server,
        &mut builds,
        "counter:1",
        &made.dir.join("src/index.js"),
        ("pong: pings }", r#"pong: pings, v: "2" }"#),
        "export const broken = ;",
    )
    .await;
    let status = status_of(&server).await;
    assert!(
        status["plugins"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("src/index.js")),
        "the bundler's message names the file: {status}"
    );
    server.stop().await;
}

#[tokio::test]
async fn dev_rebuilds_a_rust_plugin_in_a_shared_target_dir_found_by_its_dep_info() {
    // A fixed path (not a fresh temp dir), so that cargo's names for
    // roost-guest's units (by path relative to the workspace) are the same
    // on every run and stay warm in plugins/target.
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dev-rust");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let made = scaffold::create_with_sdk(
        "dev-probe",
        Lang::Rust,
        Some("probe:*"),
        &work.join("dev-probe"),
        &repo().join("guest-sdk"),
    )
    .expect("scaffold");
    // The sample plugins' lock: the same dependency versions, already built.
    std::fs::copy(
        repo().join("plugins/Cargo.lock"),
        made.dir.join("Cargo.lock"),
    )
    .expect("copy lock");
    let target = repo().join("plugins/target");
    let output = target.join("wasm32-wasip2/release/dev_probe.wasm");
    // The first build, by hand, as its README says (into the shared target
    // directory): `dev` finds the package through the dep-info it leaves.
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cargo
        .current_dir(&made.dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER"] {
        cargo.env_remove(var);
    }
    let status = tokio::task::spawn_blocking(move || cargo.status())
        .await
        .expect("build task")
        .expect("cargo runs");
    assert!(status.success(), "the scaffold builds");
    let config = write_config(&work, "probe:*", &output);
    let rust = RustBuild {
        exact_profile: true,
    };
    let (server, mut builds, first_builds) = start(&config, rust).await;
    // `dev` builds a Rust project once when it starts (nothing to do here).
    assert_eq!(first_builds, 1);
    let first = next_build(&mut builds).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    edit_and_break(
        &server,
        &mut builds,
        "probe:1",
        &made.dir.join("src/lib.rs"),
        (
            r#"json!({ "pong": pings })"#,
            r#"json!({ "pong": pings, "v": "2" })"#,
        ),
        "fn broken() -> u32 { \"not a number\" }",
    )
    .await;
    let status = status_of(&server).await;
    assert!(
        status["plugins"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("error[E0308]") && e.contains("src/lib.rs")),
        "rustc's message: {status}"
    );
    server.stop().await;
    let _ = std::fs::remove_file(output);
}
