//! The web client's files and the headers every response of the call listener carries.
//!
//! The page does the call's cryptography, so it is the trust root: it is served with a strict
//! Content-Security-Policy (scripts and styles only from this origin, no inline code, no eval)
//! and headers that stop MIME sniffing, leaking the URL (with its room name) as a referrer, and
//! any powerful feature other than the microphone and camera.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The `Content-Security-Policy` of every response. `connect-src 'self'` covers `ws:`/`wss:` to
/// the same host (CSP Level 3); `worker-src 'self'` lets the SFrame worker load.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; media-src 'self'; connect-src 'self'; worker-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// The `Permissions-Policy` of every response: the microphone and camera for this origin only,
/// and no other powerful feature for anyone.
pub const PERMISSIONS_POLICY: &str = "microphone=(self), camera=(self), accelerometer=(), \
    display-capture=(), geolocation=(), gyroscope=(), hid=(), magnetometer=(), midi=(), \
    payment=(), serial=(), usb=()";

/// The web client compiled in by `build.rs`: (file name, contents), sorted by name.
static EMBEDDED: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// Names of the web client's files compiled into this binary, for diagnostics and tests.
pub fn embedded_files() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(name, _)| *name)
}

/// Adds the security headers to `response` (kept if a handler set its own). The call
/// listener's router has it as a layer (`axum::middleware::map_response`).
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static(PERMISSIONS_POLICY),
        ),
    ] {
        headers.entry(name).or_insert(value);
    }
    response
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serves the embedded web client: `/` is `index.html`; anything not compiled in is 404.
pub(crate) async fn embedded(request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let name = match request.uri().path() {
        "/" => "index.html",
        path => path.strip_prefix('/').unwrap_or(path),
    };
    match EMBEDDED.binary_search_by(|(n, _)| (*n).cmp(name)) {
        Ok(i) => {
            let (name, body) = EMBEDDED[i];
            (
                [
                    (header::CONTENT_TYPE, content_type(name)),
                    // Revalidate each time: a new server version must not run an old page.
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response()
        }
        Err(_) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_client_is_compiled_in_and_sorted() {
        let names: Vec<_> = embedded_files().collect();
        for needed in ["index.html", "app.js", "sframe-worker.js", "style.css"] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert!(!names.iter().any(|n| n.contains('/')), "no test pages");
    }
}
