//! The `roost` binary under a small file-descriptor limit (`ulimit -n`, as
//! in a small container), flooded with connections that never finish their
//! request: more of them than it has descriptors. Each is dropped after
//! `server.header_read_timeout_ms`, so the server still answers others and
//! still shuts down when told to. A child process, so the limit is its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The child's descriptor limit, and more half-sent requests than that.
const FDS: usize = 128;
const SILENT: usize = 3 * FDS;

/// Kills the server if the test fails before it stops.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &Path, addr: SocketAddr) -> String {
    let ping = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/ping.wasm");
    format!(
        r#"
[server]
listen = "{addr}"
data_dir = "{data}"
header_read_timeout_ms = 1000

[apps.demo]
mount = "/socket"
anonymous = true

[apps.demo.routes]
"ping" = "{ping}"
"#,
        data = dir.join("data").display(),
        ping = ping.display(),
    )
}

fn start(dir: &Path) -> (Server, SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = dir.join("roost.toml");
    std::fs::write(&config, self::config(dir, addr)).expect("writing the config");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {FDS} && exec \"$0\" serve --config \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_roost"))
        .arg(&config)
        .env("ROOST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting roost");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "roost did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, addr)
}

/// Connections that send the start of a request line and nothing more.
fn half_sent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.write_all(b"GET / HTTP/1.1\r\n").expect("write");
            stream
        })
        .collect()
}

/// The status line of a whole request, waiting up to `within`.
fn status_line(addr: SocketAddr, within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(within))
        .expect("setting a read timeout");
    stream
        .write_all(
            b"GET /socket/websocket HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn half_sent_requests_past_the_fd_limit_neither_lock_others_out_nor_hold_up_shutdown() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut server, addr) = start(dir.path());

    // Three times as many as the server can hold: most wait in the listen
    // backlog and are accepted as the first ones time out.
    let _flood = half_sent(addr, SILENT);
    let asked = Instant::now();
    let status = status_line(addr, Duration::from_secs(30));
    assert!(
        status.starts_with("HTTP/1.1 "),
        "no answer within {:?} behind {SILENT} half-sent requests (got {status:?})",
        asked.elapsed()
    );

    // Half-sent requests open when shutdown begins do not hold it up.
    let _open = half_sent(addr, FDS / 2);
    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = server.0.try_wait().expect("waiting for roost") {
            assert!(exit.success(), "roost exited with {exit}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "roost still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
