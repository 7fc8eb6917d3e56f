//! The official phoenix JS client at `/_roost/phoenix.mjs` (and its source
//! map), so any page can `import { Socket, Presence } from
//! "/_roost/phoenix.mjs"` with nothing to install or bundle.
//!
//! The bytes are the npm package's own: host/build.rs installs the version
//! pinned by host/web/package-lock.json into `OUT_DIR`, and they are
//! embedded in the binary here, so the client always matches the server it
//! came with.

use std::sync::LazyLock;

use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::static_files::matches_any;

/// An embedded file and its validator.
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    /// A hash of the bytes, computed on first use.
    etag: LazyLock<String>,
}

/// `priv/static/phoenix.mjs`, the package's ES module (`exports.import`).
static MODULE: Asset = Asset {
    bytes: include_bytes!(concat!(
        env!("OUT_DIR"),
        "/web/node_modules/phoenix/priv/static/phoenix.mjs"
    )),
    content_type: "text/javascript; charset=utf-8",
    etag: LazyLock::new(|| etag(MODULE.bytes)),
};

/// Its source map, which browser dev tools fetch by the module's
/// `sourceMappingURL` comment.
static SOURCE_MAP: Asset = Asset {
    bytes: include_bytes!(concat!(
        env!("OUT_DIR"),
        "/web/node_modules/phoenix/priv/static/phoenix.mjs.map"
    )),
    content_type: "application/json",
    etag: LazyLock::new(|| etag(SOURCE_MAP.bytes)),
};

/// A day: the URL carries no version, so a longer life would keep pages on
/// an old client for that long after Roost is upgraded; after a day the
/// ETag makes the check a 304.
const CACHE_CONTROL: &str = "public, max-age=86400";

/// Serves `path`, which is under `/_roost`.
pub fn serve(path: &str, request: &Parts) -> Response {
    let asset = match path {
        "/_roost/phoenix.mjs" => &MODULE,
        "/_roost/phoenix.mjs.map" => &SOURCE_MAP,
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    if request.method != Method::GET && request.method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let etag = &*asset.etag;
    let fresh = request
        .headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tags| matches_any(tags, etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// `"<first 16 bytes of the SHA-256, hex>"`.
fn etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tags) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tags);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        serve(path, &parts)
    }

    #[test]
    fn serves_the_npm_module_with_a_validator() {
        let text = std::str::from_utf8(MODULE.bytes).unwrap();
        assert!(text.contains("var Socket = class"), "the ES module build");
        assert!(text.contains("export {"), "an ES module");
        let response = get("/_roost/phoenix.mjs", None);
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(headers[header::CACHE_CONTROL], CACHE_CONTROL);
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let response = get("/_roost/phoenix.mjs", Some(&etag));
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            get("/_roost/phoenix.mjs.map", None).status(),
            StatusCode::OK
        );
        assert_eq!(
            get("/_roost/other.js", None).status(),
            StatusCode::NOT_FOUND
        );
    }
}
