//! Socket-level rules of the Phoenix protocol (`phoenix-protocol.md` §3).

use roost_tests::TestServer;

#[tokio::test]
async fn heartbeat_is_answered_with_a_null_join_ref() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"[null,"1","phoenix","heartbeat",{}]"#,
        r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn join_of_an_unrouted_topic_is_unmatched_with_a_null_join_ref() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["11","1","nowhere","phx_join",{}]"#,
        r#"[null,"1","nowhere","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    c.call(
        r#"["11","2","nowhere","event",{}]"#,
        r#"[null,"2","nowhere","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_vsn_is_refused() {
    let server = TestServer::demo().await;
    let url = format!("ws://{}/socket/websocket?vsn=123.1.1", server.addr);
    let error = tokio_tungstenite::connect_async(url).await.expect_err("refused");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other}"),
    }
    server.stop().await;
}
