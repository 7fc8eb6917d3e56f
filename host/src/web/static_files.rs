//! Serves one app's `static` directory from disk: content types, `ETag` and
//! `Last-Modified` with their 304s, `index.html` for directories, and no
//! way out of the directory.
//!
//! Files are read from disk on every request and `Cache-Control: no-cache`
//! makes browsers revalidate each time, so an edited file shows on the next
//! reload of the page (a 304 when nothing changed); nothing is kept in memory
//! that could go stale.
//!
//! tower-http's `ServeFile` does the serving (content type from the
//! extension, `Last-Modified`, `If-Modified-Since`, ranges, `HEAD`). What it
//! lacks is added here: it sends no `ETag`, and it follows symlinks wherever
//! they lead, so this module resolves the path itself first — refusing `..`,
//! encoded separators, backslashes and NUL, and anything whose real path is
//! outside the root — and hands `ServeFile` only the real path of a regular
//! file inside it.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use tower_http::services::ServeFile;

/// What the browser may do with a copy: keep it, but ask (cheaply, with
/// `If-None-Match`) before each use, so edits show at once.
const CACHE_CONTROL: &str = "no-cache";

/// Serves `relative` — the request path after the app's `web_path`, `""` or
/// starting with `/`, still percent-encoded — from the directory `root`.
pub async fn serve(root: &Path, relative: &str, request: &Parts) -> Response {
    if request.method != Method::GET && request.method != Method::HEAD {
        let mut response = (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n").into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Ok(segments) = segments(relative) else {
        tracing::debug!(path = request.uri.path(), "static: refused a path");
        return (StatusCode::BAD_REQUEST, "invalid path\n").into_response();
    };
    let directory = relative.ends_with('/');
    let root = root.to_owned();
    // One blocking task for the few syscalls, rather than one per call.
    let resolved = tokio::task::spawn_blocking(move || resolve(&root, &segments, directory)).await;
    let (path, meta) = match resolved {
        Ok(Ok(Target::File(path, meta))) => (path, meta),
        Ok(Ok(Target::AddSlash)) => return add_slash(request),
        Ok(Err(Refusal::Outside)) => {
            tracing::warn!(
                path = request.uri.path(),
                "static: refused a symlink that leads out of the directory"
            );
            return (StatusCode::FORBIDDEN, "forbidden\n").into_response();
        }
        Ok(Err(Refusal::NotFound)) => {
            return (StatusCode::NOT_FOUND, "not found\n").into_response();
        }
        Err(error) => {
            tracing::error!("static: resolving a path failed: {error}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };

    let etag = etag(&meta);
    let mut headers = request.headers.clone();
    if let Some(etag) = &etag
        && let Some(if_none_match) = headers.get(header::IF_NONE_MATCH)
    {
        if matches_any(if_none_match, etag) {
            return not_modified(etag, &meta);
        }
        // RFC 9110 §13.1.3: with If-None-Match, If-Modified-Since is ignored,
        // and ServeFile would otherwise still answer it.
        headers.remove(header::IF_MODIFIED_SINCE);
    }
    let mut forwarded = Request::new(());
    *forwarded.method_mut() = request.method.clone();
    *forwarded.uri_mut() = request.uri.clone();
    *forwarded.headers_mut() = headers;
    let mut response = match ServeFile::new_with_mime(&path, &content_type(&path))
        .try_call(forwarded)
        .await
    {
        Ok(response) => response.map(Body::new),
        Err(error) => {
            tracing::warn!(path = %path.display(), "static: reading the file failed: {error}");
            return (StatusCode::NOT_FOUND, "not found\n").into_response();
        }
    };
    cache_headers(response.headers_mut(), etag.as_deref());
    response
}

/// The decoded path segments; an error for anything that could name a file
/// outside the directory, or a different file than it appears to: `.` and
/// `..` (also percent-encoded), encoded `/`, backslashes, NUL, and bytes
/// that are not UTF-8. Empty segments (`a//b`) are skipped.
fn segments(relative: &str) -> Result<Vec<String>, ()> {
    let mut segments = Vec::new();
    for raw in relative.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| ())?;
        if decoded == "." || decoded == ".." || decoded.contains(['/', '\\', '\0']) {
            return Err(());
        }
        segments.push(decoded.into_owned());
    }
    Ok(segments)
}

/// What a path resolved to.
#[derive(Debug)]
enum Target {
    /// A regular file inside the root: its real path and metadata.
    File(PathBuf, std::fs::Metadata),
    /// A directory asked for without its trailing slash.
    AddSlash,
}

#[derive(Debug, PartialEq)]
enum Refusal {
    NotFound,
    /// The real path is outside the root (a symlink leads out).
    Outside,
}

/// Finds the file `segments` names under `root`, following symlinks only
/// while they stay inside it; a directory means its `index.html`.
fn resolve(root: &Path, segments: &[String], directory: bool) -> Result<Target, Refusal> {
    let root = root.canonicalize().map_err(|_| Refusal::NotFound)?;
    let mut path = root.clone();
    path.extend(segments);
    let (mut real, mut meta) = real_path(&root, &path)?;
    if meta.is_dir() {
        if !directory {
            return Ok(Target::AddSlash);
        }
        (real, meta) = real_path(&root, &real.join("index.html"))?;
    } else if directory {
        return Err(Refusal::NotFound);
    }
    // Not a FIFO, socket or device: reading one could block or never end.
    if !meta.is_file() {
        return Err(Refusal::NotFound);
    }
    Ok(Target::File(real, meta))
}

/// `path` with every symlink resolved, if that is inside `root` (itself
/// canonical).
fn real_path(root: &Path, path: &Path) -> Result<(PathBuf, std::fs::Metadata), Refusal> {
    let real = path.canonicalize().map_err(|_| Refusal::NotFound)?;
    if !real.starts_with(root) {
        return Err(Refusal::Outside);
    }
    // Between this check and ServeFile's open the file could be swapped for
    // a symlink; only someone who can already write into the served
    // directory can do that.
    let meta = std::fs::metadata(&real).map_err(|_| Refusal::NotFound)?;
    Ok((real, meta))
}

/// A strong validator from size and modification time (to the nanosecond),
/// as nginx makes them: it changes when the file is saved, without reading
/// the file. `None` where the platform has no modification time.
fn etag(meta: &std::fs::Metadata) -> Option<String> {
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("\"{:x}-{:x}\"", modified.as_nanos(), meta.len()))
}

/// Whether an `If-None-Match` list names `etag` (or is `*`); the weak
/// comparison RFC 9110 asks for, so `W/"…"` matches too.
pub(super) fn matches_any(if_none_match: &HeaderValue, etag: &str) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn not_modified(etag: &str, meta: &std::fs::Metadata) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    let headers = response.headers_mut();
    cache_headers(headers, Some(etag));
    if let Ok(modified) = meta.modified()
        && let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified))
    {
        headers.insert(header::LAST_MODIFIED, value);
    }
    response
}

fn cache_headers(headers: &mut HeaderMap, etag: Option<&str>) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    // The type is the extension's, never what a browser would sniff.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(value) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(header::ETAG, value);
    }
}

/// The type for a file's extension; text types say UTF-8, which is what a
/// page's files are today and what the browser would otherwise have to
/// guess (a `.txt` would be read as windows-1252).
fn content_type(path: &Path) -> mime::Mime {
    let guess = mime_guess::from_path(path).first_or_octet_stream();
    let textual = guess.type_() == mime::TEXT || guess.subtype() == mime::JAVASCRIPT;
    if textual
        && guess.get_param(mime::CHARSET).is_none()
        && let Ok(with_charset) = format!("{}; charset=utf-8", guess.essence_str()).parse()
    {
        return with_charset;
    }
    guess
}

/// A redirect from a directory to its path with a slash, as every web server
/// does, so the page's relative links resolve inside the directory.
fn add_slash(request: &Parts) -> Response {
    let location = match request.uri.query() {
        Some(query) => format!("{}/?{query}", request.uri.path()),
        None => format!("{}/", request.uri.path()),
    };
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => (StatusCode::BAD_REQUEST, "invalid path\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A served directory and, next to it, a secret it must not leak.
    struct Site {
        dir: tempfile::TempDir,
    }

    impl Site {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let www = dir.path().join("www");
            std::fs::create_dir_all(www.join("sub")).unwrap();
            std::fs::write(www.join("index.html"), "<h1>hi</h1>").unwrap();
            std::fs::write(www.join("app.js"), "export {}").unwrap();
            std::fs::write(www.join("style.css"), "body{}").unwrap();
            std::fs::write(www.join("notes.txt"), "héllo").unwrap();
            std::fs::write(www.join("sub/page.html"), "<p>sub</p>").unwrap();
            std::fs::write(www.join("sub/a b.txt"), "spaced").unwrap();
            std::fs::create_dir(www.join("empty")).unwrap();
            std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
            std::os::unix::fs::symlink(dir.path().join("secret.txt"), www.join("leak.txt"))
                .unwrap();
            std::os::unix::fs::symlink(dir.path(), www.join("up")).unwrap();
            std::os::unix::fs::symlink(www.join("app.js"), www.join("alias.js")).unwrap();
            Self { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("www")
        }

        async fn get(&self, relative: &str, headers: &[(&str, &str)]) -> Response {
            let mut request = Request::get(format!("/web{relative}"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let (parts, ()) = request.body(()).unwrap().into_parts();
            serve(&self.root(), relative, &parts).await
        }
    }

    async fn text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .map_or("", |v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn serves_files_with_their_types_and_cache_headers() {
        let site = Site::new();
        for (path, content_type, body) in [
            ("/app.js", "text/javascript; charset=utf-8", "export {}"),
            ("/style.css", "text/css; charset=utf-8", "body{}"),
            ("/notes.txt", "text/plain; charset=utf-8", "héllo"),
            ("/index.html", "text/html; charset=utf-8", "<h1>hi</h1>"),
            ("/sub/a%20b.txt", "text/plain; charset=utf-8", "spaced"),
            ("/alias.js", "text/javascript; charset=utf-8", "export {}"),
        ] {
            let response = site.get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header(&response, header::CONTENT_TYPE),
                content_type,
                "{path}"
            );
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
            assert!(header(&response, header::ETAG).starts_with('"'), "{path}");
            assert!(!header(&response, header::LAST_MODIFIED).is_empty());
            assert_eq!(text(response).await, body, "{path}");
        }
    }

    #[tokio::test]
    async fn directories_serve_their_index_after_a_slash() {
        let site = Site::new();
        let response = site.get("/", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "<h1>hi</h1>");
        let response = site.get("", &[]).await;
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(header(&response, header::LOCATION), "/web/");
        let response = site.get("/sub", &[]).await;
        assert_eq!(header(&response, header::LOCATION), "/web/sub/");
        // No listing for a directory without an index, and no file with a slash.
        assert_eq!(
            site.get("/empty/", &[]).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            site.get("/app.js/", &[]).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            site.get("/missing.js", &[]).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn traversal_is_refused() {
        let site = Site::new();
        for path in [
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/.%2e/secret.txt",
            "/sub%2f..%2f..%2fsecret.txt",
            "/..%5csecret.txt",
            "/sub%5c..%5c..%5csecret.txt",
            "/app.js%00.html",
            "/./app.js",
            "/%ff.txt",
        ] {
            let response = site.get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
            assert!(!text(response).await.contains("secret"), "{path}");
        }
        for path in ["/leak.txt", "/up/secret.txt"] {
            let response = site.get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
            assert!(!text(response).await.contains("secret"), "{path}");
        }
        // A symlink out and back in is judged by where it lands.
        assert_eq!(
            site.get("/up/www/app.js", &[]).await.status(),
            StatusCode::OK
        );
        // What a URI cannot carry, as a client that skips checks might send it.
        for raw in ["/sub\\..\\secret.txt", "/a\0b", "/../secret.txt"] {
            assert!(segments(raw).is_err(), "{raw}");
        }
        assert_eq!(segments("/a//b/").unwrap(), ["a", "b"]);
    }

    #[tokio::test]
    async fn revalidation_answers_304_until_the_file_changes() {
        let site = Site::new();
        let first = site.get("/app.js", &[]).await;
        let etag = header(&first, header::ETAG).to_owned();
        let modified = header(&first, header::LAST_MODIFIED).to_owned();

        let response = site.get("/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&response, header::ETAG), etag);
        assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
        assert_eq!(text(response).await, "");
        let weak_in_a_list = format!("\"other\", W/{etag}");
        let response = site
            .get("/app.js", &[("if-none-match", &weak_in_a_list)])
            .await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let response = site
            .get("/app.js", &[("if-modified-since", &modified)])
            .await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        // A stale ETag wins over a matching date: the file is sent.
        let response = site
            .get(
                "/app.js",
                &[
                    ("if-none-match", "\"stale\""),
                    ("if-modified-since", &modified),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);

        // Saved again, same size: a new ETag, and the new bytes.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(site.root().join("app.js"), "export 1").unwrap();
        let response = site.get("/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_ne!(header(&response, header::ETAG), etag);
        assert_eq!(text(response).await, "export 1");
    }

    #[tokio::test]
    async fn only_get_and_head_are_served() {
        let site = Site::new();
        let (parts, ()) = Request::head("/web/app.js").body(()).unwrap().into_parts();
        let response = serve(&site.root(), "/app.js", &parts).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, header::CONTENT_LENGTH), "9");
        let (parts, ()) = Request::post("/web/app.js").body(()).unwrap().into_parts();
        let response = serve(&site.root(), "/app.js", &parts).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
