//! What browsers get over plain HTTP: apps' `static` directories at their
//! `web_path` (types, validators, 304s, edits showing at once, no way out
//! of the directory) and the phoenix client at `/_roost/phoenix.mjs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use roost_tests::{TestServer, WAIT, plugin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A temp dir holding two sites (`one/`, `two/`) and, next to them, a file
/// that must never be served.
struct Sites {
    dir: tempfile::TempDir,
}

impl Sites {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let one = dir.path().join("one");
        std::fs::create_dir_all(one.join("docs")).expect("mkdir");
        std::fs::write(one.join("index.html"), "<h1>one</h1>").expect("write");
        std::fs::write(one.join("app.js"), "export const one = 1;").expect("write");
        std::fs::write(one.join("style.css"), "body { margin: 0 }").expect("write");
        std::fs::write(one.join("data.json"), "{}").expect("write");
        std::fs::write(one.join("logo.svg"), "<svg/>").expect("write");
        std::fs::write(one.join("docs/index.html"), "<h1>docs</h1>").expect("write");
        std::fs::write(dir.path().join("secret.txt"), "top secret").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), one.join("leak.txt"))
            .expect("symlink");
        let two = dir.path().join("two");
        std::fs::create_dir_all(&two).expect("mkdir");
        std::fs::write(two.join("index.html"), "<h1>two</h1>").expect("write");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// App `one` (mount `/socket`) serving `one/` at `/`, plus `extra`.
    fn config(&self, extra: &str) -> String {
        format!(
            r#"
            [server]
            listen = "127.0.0.1:0"

            [apps.one]
            mount = "/socket"
            static = "{one}"
            web_path = "/"
            [apps.one.routes]
            "ping" = "{ping}"
            {extra}
            "#,
            one = self.path("one").display(),
            ping = plugin("ping").display(),
        )
    }

    fn two(&self) -> String {
        format!(
            r#"
            [apps.two]
            mount = "/two/socket"
            static = "{two}"
            web_path = "/two"
            [apps.two.routes]
            "ping" = "{ping}"
            "#,
            two = self.path("two").display(),
            ping = plugin("ping").display(),
        )
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .expect("client")
}

async fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map_or("", |v| v.to_str().expect("ascii header"))
}

/// Sends `target` exactly as written (no client normalizes `..` or
/// escapes away) and returns the status and body.
async fn raw_get(server: &TestServer, target: &[u8]) -> (u16, String) {
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(server.addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tcp.write_all(&request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut response))
        .await
        .expect("response timed out")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn static_files_have_their_types_and_validators() {
    let sites = Sites::new();
    let server = TestServer::with_config(&sites.config("")).await;
    for (path, content_type, body) in [
        ("/", "text/html; charset=utf-8", "<h1>one</h1>"),
        ("/index.html", "text/html; charset=utf-8", "<h1>one</h1>"),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "export const one = 1;",
        ),
        (
            "/style.css",
            "text/css; charset=utf-8",
            "body { margin: 0 }",
        ),
        ("/data.json", "application/json", "{}"),
        ("/logo.svg", "image/svg+xml", "<svg/>"),
        ("/docs/", "text/html; charset=utf-8", "<h1>docs</h1>"),
    ] {
        let response = get(&server, path, &[]).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(header(&response, "cache-control"), "no-cache", "{path}");
        assert!(!header(&response, "etag").is_empty(), "{path}");
        assert!(!header(&response, "last-modified").is_empty(), "{path}");
        assert_eq!(response.text().await.expect("body"), body, "{path}");
    }
    let response = get(&server, "/docs", &[]).await;
    assert_eq!(response.status(), 307);
    assert_eq!(header(&response, "location"), "/docs/");
    assert_eq!(get(&server, "/missing.js", &[]).await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn revalidation_is_a_304_until_the_file_is_edited() {
    let sites = Sites::new();
    let server = TestServer::with_config(&sites.config("")).await;
    let first = get(&server, "/app.js", &[]).await;
    let etag = header(&first, "etag").to_owned();
    let modified = header(&first, "last-modified").to_owned();

    let again = get(&server, "/app.js", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert_eq!(again.bytes().await.expect("body").len(), 0);
    let by_date = get(&server, "/app.js", &[("if-modified-since", &modified)]).await;
    assert_eq!(by_date.status(), 304);

    // Edited on disk: the next request has it, with a new validator.
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(sites.path("one/app.js"), "export const one = 2;").expect("edit");
    let edited = get(&server, "/app.js", &[("if-none-match", &etag)]).await;
    assert_eq!(edited.status(), 200);
    assert_ne!(header(&edited, "etag"), etag);
    assert_eq!(edited.text().await.expect("body"), "export const one = 2;");
    server.stop().await;
}

#[tokio::test]
async fn nothing_outside_the_directory_is_served() {
    let sites = Sites::new();
    let server = TestServer::with_config(&sites.config("")).await;
    for target in [
        &b"/../secret.txt"[..],
        b"/docs/../../secret.txt",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E%2Fsecret.txt",
        b"/docs%2f..%2f..%2fsecret.txt",
        b"/..%5csecret.txt",
        b"/docs\\..\\..\\secret.txt",
        b"/index.html%00",
        b"/leak.txt",
    ] {
        let (status, response) = raw_get(&server, target).await;
        let target = String::from_utf8_lossy(target);
        assert!(
            [400, 403].contains(&status),
            "{target}: {status} {response}"
        );
        assert!(!response.contains("top secret"), "{target}: {response}");
    }
    // The symlink's refusal names no path.
    let (status, response) = raw_get(&server, b"/leak.txt").await;
    assert_eq!(status, 403, "{response}");
    server.stop().await;
}

#[tokio::test]
async fn the_phoenix_client_is_served_from_the_binary() {
    let sites = Sites::new();
    let server = TestServer::with_config(&sites.config("")).await;
    let response = get(&server, "/_roost/phoenix.mjs", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert!(header(&response, "cache-control").contains("max-age="));
    let etag = header(&response, "etag").to_owned();
    let module = response.text().await.expect("body");
    assert!(module.contains("var Socket = class"), "the phoenix client");
    assert!(module.contains("export {"), "as an ES module");
    let again = get(&server, "/_roost/phoenix.mjs", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(get(&server, "/_roost/nothing.js", &[]).await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn each_web_path_serves_its_app_and_mounts_still_win() {
    let sites = Sites::new();
    let server = TestServer::with_config(&sites.config(&sites.two())).await;
    let two = get(&server, "/two/", &[]).await;
    assert_eq!(two.text().await.expect("body"), "<h1>two</h1>");
    let bare = get(&server, "/two", &[]).await;
    assert_eq!(bare.status(), 307);
    assert_eq!(header(&bare, "location"), "/two/");
    assert_eq!(get(&server, "/two/app.js", &[]).await.status(), 404);
    let one = get(&server, "/twofold", &[]).await;
    assert_eq!(
        one.status(),
        404,
        "`/twofold` is app one's, not under `/two`"
    );
    assert_eq!(
        get(&server, "/", &[]).await.text().await.expect("body"),
        "<h1>one</h1>"
    );
    // The API and the sockets keep their paths under a `/` web path.
    assert_eq!(get(&server, "/health", &[]).await.status(), 200);
    let mut socket = server.connect("/two/socket/websocket?vsn=2.0.0").await;
    socket
        .call(
            r#"["1","1","ping","phx_join",{}]"#,
            r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    server.stop().await;
}

/// Writes the config atomically, as an editor saves.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

#[tokio::test]
async fn a_config_reload_adds_a_web_path() {
    let sites = Sites::new();
    let config = sites.path("roost.toml");
    write_config(&config, &sites.config(""));
    let server = TestServer::from_file(&config).await;
    assert_eq!(get(&server, "/two/", &[]).await.status(), 404);
    write_config(&config, &sites.config(&sites.two()));
    let started = Instant::now();
    while get(&server, "/two/", &[]).await.status() != 200 {
        assert!(started.elapsed() < WAIT, "the new web path never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}
