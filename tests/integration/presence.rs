//! Presence (`phoenix-protocol.md` §6), exact frames: tracking on join
//! pushes `presence_state` and broadcasts `presence_diff`, and a channel's
//! entries leave with it however it ends. Refs and clock readings are
//! masked by [`Refs`] (`ref1`, `ref2`… by first appearance; `T`).
//!
//! The room chat tracks `{"online_at": T}` under the username; the fixture
//! tracks what the test asks (`{"track": key}` on join, `track`, `untrack`
//! and `list` events) and crashes on `boom`.

use roost_tests::{Client, Refs, TestServer, WAIT, plugin};

/// Joins `topic` as `user` on the room chat and asserts the three frames
/// the joiner gets: the reply, the room's state, its own join diff.
async fn join_room(
    c: &mut Client,
    refs: &mut Refs,
    join_ref: &str,
    topic: &str,
    user: &str,
    state: &str,
    diff: &str,
) {
    c.call(
        &format!(r#"["{join_ref}","{join_ref}","{topic}","phx_join",{{"username":"{user}"}}]"#),
        &format!(
            r#"["{join_ref}","{join_ref}","{topic}","phx_reply",{{"response":{{"channel":"{topic}"}},"status":"ok"}}]"#
        ),
    )
    .await;
    c.expect(&format!(
        r#"["{join_ref}",null,"{topic}","history",{{"messages":[]}}]"#
    ))
    .await;
    c.expect_masked(
        refs,
        &format!(r#"["{join_ref}",null,"{topic}","presence_state",{state}]"#),
    )
    .await;
    c.expect_masked(
        refs,
        &format!(r#"[null,null,"{topic}","presence_diff",{diff}]"#),
    )
    .await;
}

/// ada, then bob, join `topic`; each sees the frames of its join, and ada
/// sees bob's join diff. Their metas are `ref1` and `ref2`.
async fn ada_and_bob(server: &TestServer, topic: &str) -> (Client, Client, Refs) {
    let mut refs = Refs::default();
    let mut ada = server.connect_v2().await;
    let mut bob = server.connect_v2().await;
    join_room(
        &mut ada,
        &mut refs,
        "1",
        topic,
        "ada",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;
    let bob_joined =
        r#"{"joins":{"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}"#;
    join_room(
        &mut bob,
        &mut refs,
        "1",
        topic,
        "bob",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]},"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}"#,
        bob_joined,
    )
    .await;
    ada.expect_masked(&mut refs, &diff(topic, bob_joined)).await;
    (ada, bob, refs)
}

/// A `presence_diff` broadcast frame.
fn diff(topic: &str, payload: &str) -> String {
    format!(r#"[null,null,"{topic}","presence_diff",{payload}]"#)
}

#[tokio::test]
async fn joining_the_room_tracks_the_user_and_pushes_the_state() {
    let server = TestServer::demo().await;
    let mut refs = Refs::default();
    let mut ada = server.connect_v2().await;
    let mut bob = server.connect_v2().await;
    join_room(
        &mut ada,
        &mut refs,
        "1",
        "room:p",
        "ada",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;
    // The second user's state lists both; the first hears of the second.
    let bob_joined =
        r#"{"joins":{"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}"#;
    join_room(
        &mut bob,
        &mut refs,
        "7",
        "room:p",
        "bob",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]},"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}"#,
        bob_joined,
    )
    .await;
    ada.expect_masked(&mut refs, &diff("room:p", bob_joined))
        .await;
    assert_eq!(server.app("/socket").presence().count("room:p"), 2);
    ada.expect_silence().await;
    server.stop().await;
}

#[tokio::test]
async fn leaving_broadcasts_the_leave_to_the_others() {
    let server = TestServer::demo().await;
    let (mut ada, mut bob, mut refs) = ada_and_bob(&server, "room:l").await;

    bob.call(
        r#"["1","2","room:l","phx_leave",{}]"#,
        r#"["1","2","room:l","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    bob.expect(r#"["1","1","room:l","phx_close",{}]"#).await;
    ada.expect_masked(
        &mut refs,
        &diff(
            "room:l",
            r#"{"joins":{},"leaves":{"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}}"#,
        ),
    )
    .await;
    // The leaver is no longer subscribed: it does not hear its own leave.
    bob.expect_silence().await;
    assert_eq!(server.app("/socket").presence().count("room:l"), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_closed_socket_leaves_the_room() {
    let server = TestServer::demo().await;
    let (mut ada, bob, mut refs) = ada_and_bob(&server, "room:c").await;

    // The connection drops without a leave.
    drop(bob);
    ada.expect_masked(
        &mut refs,
        &diff(
            "room:c",
            r#"{"joins":{},"leaves":{"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}}"#,
        ),
    )
    .await;
    assert_eq!(server.app("/socket").presence().count("room:c"), 1);
    server.stop().await;
}

#[tokio::test]
async fn one_user_on_two_sockets_is_one_key_with_two_metas() {
    let server = TestServer::demo().await;
    let mut refs = Refs::default();
    let mut tab1 = server.connect_v2().await;
    let mut tab2 = server.connect_v2().await;
    join_room(
        &mut tab1,
        &mut refs,
        "1",
        "room:t",
        "ada",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;
    let second_tab =
        r#"{"joins":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}"#;
    join_room(
        &mut tab2,
        &mut refs,
        "1",
        "room:t",
        "ada",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"},{"online_at":T,"phx_ref":"ref2"}]}}"#,
        second_tab,
    )
    .await;
    tab1.expect_masked(&mut refs, &diff("room:t", second_tab))
        .await;

    // Closing one tab takes only its meta.
    drop(tab2);
    tab1.expect_masked(
        &mut refs,
        &diff(
            "room:t",
            r#"{"joins":{},"leaves":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}}"#,
        ),
    )
    .await;
    let mut carol = server.connect_v2().await;
    join_room(
        &mut carol,
        &mut refs,
        "1",
        "room:t",
        "carol",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]},"carol":{"metas":[{"online_at":T,"phx_ref":"ref3"}]}}"#,
        r#"{"joins":{"carol":{"metas":[{"online_at":T,"phx_ref":"ref3"}]}},"leaves":{}}"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_duplicate_join_replaces_the_old_channels_presence() {
    let server = TestServer::demo().await;
    let (mut ada, mut bob, mut refs) = ada_and_bob(&server, "room:d").await;

    // The same socket joins again: the old channel's meta leaves before
    // the new join tracks, so the new state has the new meta only.
    // On the wire: the new reply, the old channel's phx_close, then what
    // the new channel sends after its join (history, state), then one diff
    // with the leave and the join (one batch window).
    let ada_again = r#"{"joins":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref3"}]}},"leaves":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}}"#;
    ada.call(
        r#"["5","5","room:d","phx_join",{"username":"ada"}]"#,
        r#"["5","5","room:d","phx_reply",{"response":{"channel":"room:d"},"status":"ok"}]"#,
    )
    .await;
    ada.expect(r#"["1","1","room:d","phx_close",{}]"#).await;
    ada.expect(r#"["5",null,"room:d","history",{"messages":[]}]"#)
        .await;
    ada.expect_masked(
        &mut refs,
        r#"["5",null,"room:d","presence_state",{"ada":{"metas":[{"online_at":T,"phx_ref":"ref3"}]},"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}]"#,
    )
    .await;
    ada.expect_masked(&mut refs, &diff("room:d", ada_again))
        .await;
    bob.expect_masked(&mut refs, &diff("room:d", ada_again))
        .await;
    assert_eq!(server.app("/socket").presence().count("room:d"), 2);
    server.stop().await;
}

/// Joins the fixture on `topic`, tracking `key` with `{"fixture":true}`;
/// asserts the reply and the state, and returns after its own join diff.
async fn join_fixture(
    c: &mut Client,
    refs: &mut Refs,
    topic: &str,
    key: &str,
    state: &str,
    diff_payload: &str,
) {
    c.call(
        &format!(r#"["1","1","{topic}","phx_join",{{"track":"{key}"}}]"#),
        &format!(r#"["1","1","{topic}","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
    )
    .await;
    c.expect_masked(
        refs,
        &format!(r#"["1",null,"{topic}","presence_state",{state}]"#),
    )
    .await;
    c.expect_masked(refs, &diff(topic, diff_payload)).await;
}

#[tokio::test]
async fn a_crashed_channel_leaves() {
    let server = TestServer::demo().await;
    let mut refs = Refs::default();
    let mut watcher = server.connect_v2().await;
    let mut victim = server.connect_v2().await;
    join_fixture(
        &mut watcher,
        &mut refs,
        "fixture:crash",
        "w",
        r#"{"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;
    let victim_joined =
        r#"{"joins":{"v":{"metas":[{"fixture":true,"phx_ref":"ref2"}]}},"leaves":{}}"#;
    join_fixture(
        &mut victim,
        &mut refs,
        "fixture:crash",
        "v",
        r#"{"v":{"metas":[{"fixture":true,"phx_ref":"ref2"}]},"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}}"#,
        victim_joined,
    )
    .await;
    watcher
        .expect_masked(&mut refs, &diff("fixture:crash", victim_joined))
        .await;

    victim.send(r#"["1","2","fixture:crash","boom",{}]"#).await;
    victim
        .expect(r#"["1","1","fixture:crash","phx_error",{"reason":"channel_crash"}]"#)
        .await;
    watcher
        .expect_masked(
            &mut refs,
            &diff(
                "fixture:crash",
                r#"{"joins":{},"leaves":{"v":{"metas":[{"fixture":true,"phx_ref":"ref2"}]}}}"#,
            ),
        )
        .await;
    assert_eq!(server.app("/socket").presence().count("fixture:crash"), 1);
    server.stop().await;
}

#[tokio::test]
async fn tracking_again_is_one_update_diff_and_untrack_is_a_leave() {
    let server = TestServer::demo().await;
    let mut refs = Refs::default();
    let mut c = server.connect_v2().await;
    join_fixture(
        &mut c,
        &mut refs,
        "fixture:u",
        "ada",
        r#"{"ada":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"ada":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;

    // The reply at once; the diff at the end of its batch window.
    c.send(r#"["1","2","fixture:u","track",{"key":"ada","meta":{"typing":true}}]"#)
        .await;
    c.expect(r#"["1","2","fixture:u","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    c.expect_masked(
        &mut refs,
        &diff(
            "fixture:u",
            r#"{"joins":{"ada":{"metas":[{"phx_ref":"ref2","phx_ref_prev":"ref1","typing":true}]}},"leaves":{"ada":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}}}"#,
        ),
    )
    .await;
    c.send(r#"["1","3","fixture:u","list",{}]"#).await;
    c.expect_masked(
        &mut refs,
        r#"["1","3","fixture:u","phx_reply",{"response":{"ada":{"metas":[{"phx_ref":"ref2","phx_ref_prev":"ref1","typing":true}]}},"status":"ok"}]"#,
    )
    .await;

    c.send(r#"["1","4","fixture:u","untrack",{"key":"ada"}]"#)
        .await;
    c.expect(r#"["1","4","fixture:u","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    c.expect_masked(
        &mut refs,
        &diff(
            "fixture:u",
            r#"{"joins":{},"leaves":{"ada":{"metas":[{"phx_ref":"ref2","phx_ref_prev":"ref1","typing":true}]}}}"#,
        ),
    )
    .await;
    // Untracking what is not tracked changes nothing and broadcasts nothing.
    c.call(
        r#"["1","5","fixture:u","untrack",{"key":"ada"}]"#,
        r#"["1","5","fixture:u","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["1","6","fixture:u","list",{}]"#,
        r#"["1","6","fixture:u","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn refused_and_crashed_joins_leave_no_presence_behind() {
    let server = TestServer::demo().await;
    let mut refs = Refs::default();
    let mut watcher = server.connect_v2().await;
    join_fixture(
        &mut watcher,
        &mut refs,
        "fixture:r",
        "w",
        r#"{"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;
    let mut other = server.connect_v2().await;
    // Each join tracks, then refuses or crashes. Its join diff is dropped
    // with its other effects; the entry goes too, and its leave is still
    // broadcast, since another channel might have listed it meanwhile (a
    // leave of an unknown ref is a no-op for phoenix.js).
    for (n, how, reply) in [
        ("2", "refuse", r#"{"reason":"refused"}"#),
        ("3", "crash", r#"{"reason":"join crashed"}"#),
    ] {
        other
            .call(
                &format!(r#"["{n}","{n}","fixture:r","phx_join",{{"track":"ghost","{how}":true}}]"#),
                &format!(r#"["{n}","{n}","fixture:r","phx_reply",{{"response":{reply},"status":"error"}}]"#),
            )
            .await;
        watcher
            .expect_masked(
                &mut refs,
                &diff(
                    "fixture:r",
                    &format!(
                        r#"{{"joins":{{}},"leaves":{{"ghost":{{"metas":[{{"fixture":true,"phx_ref":"ref{n}"}}]}}}}}}"#
                    ),
                ),
            )
            .await;
        other.expect_silence().await;
    }
    watcher.send(r#"["1","2","fixture:r","list",{}]"#).await;
    watcher
        .expect_masked(
            &mut refs,
            r#"["1","2","fixture:r","phx_reply",{"response":{"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}},"status":"ok"}]"#,
        )
        .await;
    server.stop().await;
}

#[tokio::test]
async fn terminate_cannot_track_and_a_bad_meta_crashes_the_channel() {
    let server = TestServer::demo().await;
    let mut refs = Refs::default();
    let mut watcher = server.connect_v2().await;
    join_fixture(
        &mut watcher,
        &mut refs,
        "fixture:t",
        "w",
        r#"{"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"w":{"metas":[{"fixture":true,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;

    // terminate tracks "ghost": ignored, the channel is already gone.
    let mut leaver = server.connect_v2().await;
    leaver
        .call(
            r#"["1","1","fixture:t","phx_join",{"terminate_track":"ghost"}]"#,
            r#"["1","1","fixture:t","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    leaver
        .call(
            r#"["1","2","fixture:t","phx_leave",{}]"#,
            r#"["1","2","fixture:t","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    leaver
        .expect(r#"["1",null,"fixture:t","you_left",{"reason":"leave"}]"#)
        .await;
    leaver
        .expect(r#"["1","1","fixture:t","phx_close",{}]"#)
        .await;
    watcher.expect_silence().await;
    assert_eq!(server.app("/socket").presence().count("fixture:t"), 1);

    // A meta that is not a JSON object is the guest's error: its channel
    // crashes, having tracked nothing.
    watcher
        .send(r#"["1","2","fixture:t","track",{"key":"w","meta":[1]}]"#)
        .await;
    watcher
        .expect(r#"["1","1","fixture:t","phx_error",{"reason":"channel_crash"}]"#)
        .await;
    assert_eq!(server.app("/socket").presence().count("fixture:t"), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_removed_route_takes_its_channels_presence() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("roost.toml");
    let text = |routes: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[apps.demo]\nmount = \"/socket\"\ncapabilities = {{ kv = true }}\n[apps.demo.routes]\n\"ping\" = \"{}\"\n{routes}",
            plugin("ping").display()
        )
    };
    let room = format!("\"room:*\" = \"{}\"\n", plugin("room_chat").display());
    std::fs::write(&config, text(&room)).expect("write config");
    let server = TestServer::from_file(&config).await;
    let mut refs = Refs::default();
    let mut ada = server.connect_v2().await;
    join_room(
        &mut ada,
        &mut refs,
        "1",
        "room:gone",
        "ada",
        r#"{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}"#,
        r#"{"joins":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}"#,
    )
    .await;
    let app = server.app("/socket");
    assert_eq!(app.presence().count("room:gone"), 1);

    // Replaced as an editor saves: the route goes, the channel errors.
    let tmp = dir.path().join(".roost.toml.tmp");
    std::fs::write(&tmp, text("")).expect("write config");
    std::fs::rename(&tmp, &config).expect("rename config");
    ada.expect(r#"["1","1","room:gone","phx_error",{"reason":"channel_crash"}]"#)
        .await;
    assert_eq!(app.presence().count("room:gone"), 0);
    assert_eq!(app.presence().list("room:gone"), "{}");
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_joins_sees_everyone() {
    // Joins on many sockets at once: every joiner's state plus the diffs it
    // receives must add up to everyone, whatever the interleaving — a join
    // is subscribed before its guest lists the state.
    let server = TestServer::demo().await;
    const USERS: usize = 50;
    let mut clients = Vec::new();
    for _ in 0..USERS {
        clients.push(server.connect_v2().await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&format!(
            r#"["1","1","room:burst","phx_join",{{"username":"u{i}"}}]"#
        ))
        .await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < USERS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "u{i} saw only {seen:?}"
            );
            let frame: serde_json::Value =
                serde_json::from_str(&c.recv_text().await).expect("JSON frame");
            let users = match frame[3].as_str() {
                Some("presence_state") => frame[4].clone(),
                Some("presence_diff") => frame[4]["joins"].clone(),
                _ => continue,
            };
            for user in users.as_object().expect("an object").keys() {
                seen.insert(user.clone());
            }
        }
    }
    assert_eq!(server.app("/socket").presence().count("room:burst"), USERS);
    server.stop().await;
}

/// A watcher in a room that `users` join at once: how many `presence_diff`
/// frames it got until it had seen them all.
async fn diffs_a_watcher_gets(server: &TestServer, users: usize) -> usize {
    let mut watcher = server.connect_v2().await;
    watcher
        .send(r#"["1","1","room:crowd","phx_join",{"username":"watcher"}]"#)
        .await;
    // Its own reply, history, state and diff.
    while !watcher.recv_text().await.contains("presence_diff") {}
    let mut crowd = Vec::new();
    for i in 0..users {
        let mut c = server.connect_v2().await;
        c.send(&format!(
            r#"["1","1","room:crowd","phx_join",{{"username":"u{i}"}}]"#
        ))
        .await;
        crowd.push(c);
    }
    let (mut seen, mut diffs) = (std::collections::BTreeSet::new(), 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < users {
        assert!(tokio::time::Instant::now() < deadline, "saw {seen:?}");
        let frame: serde_json::Value =
            serde_json::from_str(&watcher.recv_text().await).expect("JSON frame");
        if frame[3] == "presence_diff" {
            diffs += 1;
            seen.extend(
                frame[4]["joins"]
                    .as_object()
                    .expect("joins")
                    .keys()
                    .cloned(),
            );
        }
    }
    diffs
}

#[tokio::test]
async fn a_crowd_joining_within_the_batch_window_is_one_diff_per_window() {
    let users = 40;
    let batched =
        TestServer::with_config(&roost_tests::demo_config_with("presence_batch_ms = 1000")).await;
    assert_eq!(
        diffs_a_watcher_gets(&batched, users).await,
        1,
        "every join in one diff"
    );
    batched.stop().await;
    let unbatched =
        TestServer::with_config(&roost_tests::demo_config_with("presence_batch_ms = 0")).await;
    assert_eq!(
        diffs_a_watcher_gets(&unbatched, users).await,
        users,
        "a diff per join"
    );
    unbatched.stop().await;
}
