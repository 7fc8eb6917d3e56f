//! Hot reload: plugin files and the config change under a running server;
//! no socket closes, no message is lost or answered twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roost_host::runtime::{PluginSlot, SlotStatus, content_hash};
use roost_tests::{Client, TestServer, WAIT, plugin};
use serde_json::Value;

/// A temp dir with a config whose `counter:*` route points at a copy of a
/// versioned fixture build, so the test can overwrite it.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(version: &str) -> Self {
        let site = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::copy(plugin(&format!("version_{version}")), site.plugin()).expect("copy plugin");
        site.write_config(&site.config_text("", ""));
        site
    }

    fn plugin(&self) -> PathBuf {
        self.dir.path().join("counter.wasm")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("roost.toml")
    }

    fn config_text(&self, extra_routes: &str, extra_apps: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[apps.demo]\nmount = \"/socket\"\n# Traffic on one socket, as fast as it is answered.\nlimits = {{ messages_per_second = 1000000 }}\n[apps.demo.routes]\n\"counter:*\" = \"counter.wasm\"\n\"ping\" = \"{ping}\"\n{extra_routes}\n{extra_apps}",
            ping = plugin("ping").display()
        )
    }

    /// Replaces the config atomically, as an editor's save does.
    fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join(".roost.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config()).expect("rename config");
    }
}

/// Replaces the plugin at `target` with a fixture build, by rename (an
/// editor's save) or in place (as `cp` does).
fn install(target: &Path, version: &str, in_place: bool) {
    let bytes = std::fs::read(plugin(&format!("version_{version}"))).expect("read build");
    if in_place {
        std::fs::write(target, bytes).expect("write plugin");
    } else {
        let tmp = target.with_extension("tmp");
        std::fs::write(&tmp, bytes).expect("write plugin");
        std::fs::rename(&tmp, target).expect("rename plugin");
    }
}

fn slot(server: &TestServer, topic: &str) -> Arc<PluginSlot> {
    server
        .app("/socket")
        .state()
        .router()
        .route(topic)
        .cloned()
        .expect("routed")
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `count` and returns (version, count) from the reply.
async fn count(c: &mut Client, n: u64) -> (String, u64) {
    c.send(&format!(r#"["1","{n}","counter:1","count",{{}}]"#))
        .await;
    let reply: Value = serde_json::from_str(&c.recv_text().await).expect("json");
    assert_eq!(
        reply[1],
        n.to_string(),
        "a reply for every push, in order: {reply}"
    );
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let response = &reply[4]["response"];
    (
        response["version"].as_str().expect("version").to_owned(),
        response["count"].as_u64().expect("count"),
    )
}

async fn joined(server: &TestServer) -> Client {
    let mut c = server.connect_v2().await;
    c.send(r#"["1","1","counter:1","phx_join",{}]"#).await;
    c.recv_text().await;
    c
}

#[tokio::test]
async fn swaps_under_traffic_lose_nothing_and_keep_assigns() {
    let site = Site::new("a");
    let server = TestServer::from_file(&site.config()).await;
    let mut c = joined(&server).await;
    let slot = slot(&server, "counter:1");

    let swaps = 10;
    let swapper = {
        let dir = site.dir.path().to_owned();
        tokio::spawn(async move {
            for i in 0..swaps {
                let version = if i % 2 == 0 { "b" } else { "a" };
                install(&dir.join("counter.wasm"), version, i % 3 == 0);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let mut n = 2;
    let mut versions = Vec::new();
    while !swapper.is_finished() {
        let (version, count) = count(&mut c, n).await;
        assert_eq!(count, n - 1, "assigns carried across every swap");
        if versions.last() != Some(&version) {
            versions.push(version);
        }
        n += 1;
    }
    swapper.await.expect("swapper");
    // The last build written was "a"; wait for it to serve.
    wait_for("the final build", || {
        slot.current().version() == slot_version("a")
    })
    .await;
    let (version, count) = count(&mut c, n).await;
    assert_eq!((version.as_str(), count), ("a", n - 1));
    assert!(
        versions.len() >= 3,
        "replies switched version: {versions:?}"
    );
    let status: SlotStatus = slot.status();
    assert_eq!(status.reload_failures, 0, "{status:?}");
    assert!(status.reloads >= 2, "{status:?}");
    server.stop().await;
}

/// The content hash the server reports for a fixture build.
fn slot_version(version: &str) -> String {
    content_hash(&std::fs::read(plugin(&format!("version_{version}"))).expect("build"))
}

#[tokio::test]
async fn a_broken_file_never_replaces_a_working_version() {
    let site = Site::new("a");
    let server = TestServer::from_file(&site.config()).await;
    let mut c = joined(&server).await;
    let slot = slot(&server, "counter:1");
    let good = std::fs::read(plugin("version_b")).expect("build");

    for (i, broken) in [
        b"garbage, not wasm".to_vec(),
        good[..good.len() / 2].to_vec(),
        std::fs::read(plugin("version_a")).expect("build")[..8].to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(site.plugin(), broken).expect("write");
        let failures = i as u64 + 1;
        wait_for("the failure to be recorded", || {
            slot.status().reload_failures >= failures
        })
        .await;
        let (version, count) = count(&mut c, i as u64 + 2).await;
        assert_eq!((version.as_str(), count), ("a", i as u64 + 1));
    }
    let status = slot.status();
    assert!(status.last_error.is_some(), "{status:?}");

    install(&site.plugin(), "b", false);
    wait_for("the good build", || {
        slot.current().version() == slot_version("b")
    })
    .await;
    let (version, count) = count(&mut c, 5).await;
    assert_eq!((version.as_str(), count), ("b", 4));
    server.stop().await;
}

#[tokio::test]
async fn a_file_written_in_pieces_is_one_reload() {
    let site = Site::new("a");
    let server = TestServer::from_file(&site.config()).await;
    let slot = slot(&server, "counter:1");
    let bytes = std::fs::read(plugin("version_b")).expect("build");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(site.plugin()).expect("create");
        for piece in bytes.chunks(bytes.len() / 3 + 1) {
            file.write_all(piece).expect("write");
            file.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    wait_for("the new build", || {
        slot.current().version() == slot_version("b")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = slot.status();
    assert_eq!(
        (status.reloads, status.reload_failures),
        (1, 0),
        "{status:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn config_changes_go_live_and_bad_ones_are_refused() {
    let site = Site::new("a");
    let server = TestServer::from_file(&site.config()).await;
    let mut c = joined(&server).await;
    let room = plugin("room_chat");

    // An app added: it answers on its mount.
    let extra_app = format!(
        "[apps.second]\nmount = \"/second\"\ncapabilities = {{ kv = true }}\n[apps.second.routes]\n\"room:*\" = \"{}\"\n",
        room.display()
    );
    site.write_config(&site.config_text("", &extra_app));
    wait_for("the new app", || server.server().app("/second").is_some()).await;
    let mut second = server.connect("/second/websocket?vsn=2.0.0").await;
    second
        .call(
            r#"["1","1","room:x","phx_join",{}]"#,
            r#"["1","1","room:x","phx_reply",{"response":{"channel":"room:x"},"status":"ok"}]"#,
        )
        .await;

    // An invalid config is refused whole: the running one stays.
    site.write_config(
        "[apps.demo]\nmount = \"/socket\"\nroutes = { \"counter:*a\" = \"counter.wasm\" }\n",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.server().app("/second").is_some());
    count(&mut c, 2).await;

    // A route removed: its channels error so clients rejoin, new joins are unmatched.
    let ping_only = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[apps.demo]\nmount = \"/socket\"\n[apps.demo.routes]\n\"ping\" = \"{}\"\n\n{extra_app}",
        plugin("ping").display()
    );
    site.write_config(&ping_only);
    c.expect(r#"["1","1","counter:1","phx_error",{"reason":"channel_crash"}]"#)
        .await;
    c.call(
        r#"["2","3","counter:1","phx_join",{}]"#,
        r#"[null,"3","counter:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    c.call(
        r#"["4","4","ping","phx_join",{}]"#,
        r#"["4","4","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;

    // An app removed: its sockets close with a code that reconnects.
    site.write_config(&site.config_text("", ""));
    let close = second.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    wait_for("the app to go", || server.server().app("/second").is_none()).await;
    server.stop().await;
}

#[tokio::test]
async fn compiled_plugins_are_cached_across_restarts() {
    let site = Site::new("a");
    let cache = tempfile::tempdir().expect("cache dir");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncache_dir = \"{}\"\nwatch = false\n\n[apps.demo]\nmount = \"/socket\"\n[apps.demo.routes]\n\"counter:*\" = \"{}\"\n",
        cache.path().display(),
        site.plugin().display()
    );
    let first = TestServer::with_config(&config).await;
    assert_eq!(first.server().runtime().cache_stats(), (0, 1));
    first.stop().await;
    let second = TestServer::with_config(&config).await;
    assert_eq!(
        second.server().runtime().cache_stats(),
        (1, 0),
        "the restart did not recompile"
    );
    second.stop().await;
}

#[tokio::test]
async fn a_pending_timer_survives_a_swap_and_fires_into_the_new_code() {
    let site = Site::new("a");
    let server = TestServer::from_file(&site.config()).await;
    let mut c = joined(&server).await;
    c.call(
        r#"["1","2","counter:1","tick",{"delay_ms":800}]"#,
        r#"["1","2","counter:1","phx_reply",{"response":{"set":true},"status":"ok"}]"#,
    )
    .await;
    let slot = slot(&server, "counter:1");
    let before = slot.status().version;
    install(&site.plugin(), "b", false);
    wait_for("the swap", || slot.status().version != before).await;
    c.expect(r#"["1",null,"counter:1","tock",{"fired_in":"b","set_by":"a"}]"#)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_route_swaps_between_a_0_1_build_and_a_0_2_build_and_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let routed = dir.path().join("ping.wasm");
    let put = |name: &str| {
        let tmp = dir.path().join("ping.tmp");
        std::fs::copy(plugin(name), &tmp).expect("copy");
        std::fs::rename(&tmp, &routed).expect("rename");
    };
    put("ping_v01");
    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[apps.demo]\nmount = \"/socket\"\n[apps.demo.routes]\n\"ping\" = \"ping.wasm\"\n",
    )
    .expect("write config");
    let server = TestServer::from_file(&config).await;
    let slot = slot(&server, "ping");
    assert_eq!(slot.status().wit, "roost:channel@0.1.0");
    let mut c = server.connect_v2().await;
    c.call(
        r#"["1","1","ping","phx_join",{}]"#,
        r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    let mut n = 2;
    for (build, wit) in [("ping", "0.2.0"), ("ping_v01", "0.1.0"), ("ping", "0.2.0")] {
        put(build);
        wait_for("the swap", || slot.status().wit.ends_with(wit)).await;
        // The same joined channel, served by either contract.
        c.call(
            &format!(r#"["1","{n}","ping","ping",{{"ack_phrase":"{wit}"}}]"#),
            &format!(
                r#"["1","{n}","ping","phx_reply",{{"response":{{"ping":"{wit}"}},"status":"ok"}}]"#
            ),
        )
        .await;
        n += 1;
    }
    // Only the 0.2 build has timers.
    c.call(
        &format!(r#"["1","{n}","ping","ping_after",{{"delay_ms":10}}]"#),
        &format!(r#"["1","{n}","ping","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
    )
    .await;
    c.expect(r#"["1",null,"ping","pong_later",{"delay_ms":10}]"#)
        .await;
    server.stop().await;
}
