//! The display app over https: the built-in demo page or files from
//! `web_root`, and the security headers every response carries.
//!
//! The app is served by the gateway itself, so its `Origin` is the
//! gateway's own https origin and means something (a `file://` page sends
//! `Origin: null`, which proves nothing). The CSP keeps the page from
//! loading or connecting anywhere else.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri, header};

use crate::limits::MAX_STATIC_FILE;

const DEMO_HTML: &str = include_str!("../assets/index.html");
const DEMO_JS: &str = include_str!("../assets/app.js");
const DEMO_CSS: &str = include_str!("../assets/app.css");

/// What the display app needs: its CSP, where its files are, and the
/// WebSocket path the demo page connects to. Fixed for the run.
#[derive(Debug)]
pub(crate) struct Site {
    /// The `Content-Security-Policy` of every response.
    pub csp: HeaderValue,
    /// `web_root`, or the built-in demo page.
    pub web_root: Option<PathBuf>,
    /// The WebSocket path.
    pub ws_path: String,
}

/// Adds CSP, referrer, caching and sniffing headers to every response.
pub(crate) async fn security_headers(
    State(site): State<Arc<Site>>,
    req: Request,
    next: Next,
) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, site.csp.clone());
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

pub(crate) async fn index(site: Arc<Site>) -> Response {
    match &site.web_root {
        None => Html(DEMO_HTML.replace("{{WS_PATH}}", &site.ws_path)).into_response(),
        Some(root) => serve_file(root, "index.html").await,
    }
}

pub(crate) async fn static_file(site: Arc<Site>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    match &site.web_root {
        None => match path {
            "app.js" => (
                [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                DEMO_JS,
            )
                .into_response(),
            "app.css" => (
                [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                DEMO_CSS,
            )
                .into_response(),
            _ => not_found(),
        },
        Some(root) => serve_file(root, path).await,
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Resolves `rel` under `root` with only normal, non-hidden components.
fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains(['%', '\\', '\0']) {
        return None;
    }
    let rel = Path::new(rel);
    for c in rel.components() {
        match c {
            Component::Normal(s) if !s.to_string_lossy().starts_with('.') => {}
            _ => return None,
        }
    }
    let full = root.join(rel).canonicalize().ok()?;
    let root = root.canonicalize().ok()?;
    full.starts_with(&root).then_some(full)
}

async fn serve_file(root: &Path, rel: &str) -> Response {
    let Some(path) = resolve(root, rel) else {
        return not_found();
    };
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return not_found();
    };
    if !meta.is_file() || meta.len() > MAX_STATIC_FILE {
        return not_found();
    }
    let Ok(body) = tokio::fs::read(&path).await else {
        return not_found();
    };
    let ct = match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("woff2") => "font/woff2",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    };
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_traversal_and_hidden() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.js"), "x").unwrap();
        std::fs::write(d.path().join(".secret"), "x").unwrap();
        assert!(resolve(d.path(), "a.js").is_some());
        for bad in [
            "",
            "../etc/passwd",
            "..",
            ".secret",
            "a/../a.js",
            "/etc/passwd",
            "%2e%2e/x",
            "a.js\0",
            "./a.js",
        ] {
            assert!(resolve(d.path(), bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn resolve_refuses_symlink_escape() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("s"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("s"), d.path().join("link")).unwrap();
        assert!(resolve(d.path(), "link").is_none());
    }
}
