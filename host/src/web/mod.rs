//! What Roost serves to browsers over plain HTTP: each app's static files
//! (`[apps.X] static`, at the app's `web_path`) and the official phoenix
//! client at `/_roost/phoenix.mjs`, so a page and its socket can share an
//! origin (and `check_origin = true` just works).
//!
//! The server's fallback hands a request here when no app's transport took
//! it.
//! [`static_files`] serves a directory from disk, [`client`] the client
//! embedded at build time. Apps are looked up per request, so a config
//! reload that adds, moves or removes a `static` directory applies at once.

mod client;
mod static_files;

use axum::http::request::Parts;
use axum::response::Response;

use crate::apps::Apps;
pub use crate::config::{RESERVED_PATHS, ROOST_PATH};

/// Serves `request` if its path is Roost's own (`/_roost/…`) or under some
/// app's `web_path`; `None` if nothing here claims the path.
pub async fn serve(apps: &Apps, request: &Parts) -> Option<Response> {
    let path = request.uri.path();
    if under(path, ROOST_PATH) {
        return Some(client::serve(path, request));
    }
    // The most specific `web_path` wins: `/` is under every other one.
    let (root, web_path) = apps
        .all()
        .iter()
        .filter_map(|app| {
            let state = app.state();
            let config = state.config();
            let root = config.static_dir.clone()?;
            let web_path = config.web_path.clone()?;
            under(path, &web_path).then_some((root, web_path))
        })
        .max_by_key(|(_, web_path)| web_path.len())?;
    // What follows the web path: `""` for the web path itself (which then
    // redirects to add the slash), else `/…`.
    let relative = if web_path == "/" {
        path
    } else {
        &path[web_path.len()..]
    };
    Some(static_files::serve(&root, relative, request).await)
}

/// Whether `path` is `base` or below it (`/chat` is under `/chat` and `/`,
/// but not under `/ch`).
fn under(path: &str, base: &str) -> bool {
    base == "/"
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_whole_segments_only() {
        assert!(under("/chat", "/chat"));
        assert!(under("/chat/", "/chat"));
        assert!(under("/chat/a.js", "/chat"));
        assert!(!under("/chatter", "/chat"));
        assert!(under("/anything", "/"));
        assert!(under("/_roost/phoenix.mjs", ROOST_PATH));
        assert!(!under("/_roosting", ROOST_PATH));
    }
}
