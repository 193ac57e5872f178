//! `GET /ui`: the web page that shows each experiment live, and its assets,
//! embedded in the binary (no CDN: it works offline).
//!
//! Owns: which asset each path names, its content type, and the headers every
//! page response carries: a strict `Content-Security-Policy` (scripts and
//! styles from this listener only, no inline script, nothing framed), no
//! sniffing, no referrer. The page is read-only without the admin token; the
//! token, entered on the page, is kept in `sessionStorage` and sent in the
//! `Authorization` header, never in a cookie, so another site cannot act with it.
//!
//! Never: serves anything but these files; reads no disk at run time.

use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::proxy::body::ProxyBody;
use crate::proxy::problem::Problem;

/// The policy on every page response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// (path, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/ui",
        "text/html; charset=utf-8",
        include_bytes!("ui/index.html"),
    ),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/app.js"),
    ),
    (
        "/ui/app.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/app.css"),
    ),
    (
        "/ui/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "/ui/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/vendor/uPlot.min.css"),
    ),
    (
        "/ui/LICENSE.uPlot.txt",
        "text/plain; charset=utf-8",
        include_bytes!("ui/vendor/LICENSE"),
    ),
];

/// Whether `path` is the page's (`/ui`, `/ui/`, `/ui/...`).
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Answers a page path: the asset, 404 for another name under `/ui/`, 405
/// for anything but GET and HEAD.
pub fn serve(method: &Method, path: &str) -> Result<Response<ProxyBody>, Problem> {
    if method != Method::GET && method != Method::HEAD {
        return Err(Problem::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed on {path}"),
        ));
    }
    let path = if path == "/ui/" { "/ui" } else { path };
    let (_, content_type, bytes) = ASSETS.iter().find(|(p, _, _)| *p == path).ok_or_else(|| {
        Problem::client(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("the page has no file at {path}"),
        )
    })?;
    let body = if method == Method::HEAD {
        ProxyBody::full(bytes::Bytes::new())
    } else {
        ProxyBody::full(bytes::Bytes::from_static(bytes))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Assets change with the binary; a restart after an upgrade must not
    // serve a stale script against a new API.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}
