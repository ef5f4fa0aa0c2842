//! The browser app: `static/` embedded in the binary at build time, so that an
//! installed binary serves it from any directory. Each file goes out with its
//! content type, an `ETag` (its SHA-256) and `Cache-Control: no-cache` (browsers
//! revalidate, and get 304 while the file is unchanged). `--static-dir` serves a
//! directory instead, for working on the app without rebuilding.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::RustEmbed)]
#[folder = "static/"]
struct Assets;

/// The embedded file at a request path (`/` and `dir/` mean their `index.html`).
fn lookup(path: &str) -> Option<rust_embed::EmbeddedFile> {
    let path = path.trim_start_matches('/');
    if path.is_empty() || path.ends_with('/') {
        return Assets::get(&format!("{path}index.html"));
    }
    Assets::get(path)
}

/// Answers a GET or HEAD for an embedded file.
pub async fn serve(req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
    }
    let Some(file) = lookup(req.uri().path()) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = match fresh {
        true => StatusCode::NOT_MODIFIED.into_response(),
        false => {
            let len = file.data.len();
            let body = match req.method() == Method::HEAD {
                true => Body::empty(),
                false => Body::from(file.data),
            };
            let mut r = Response::new(body);
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(ct) = HeaderValue::from_str(file.metadata.mimetype()) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_embedded() {
        assert!(lookup("/").is_some_and(|f| f.metadata.mimetype() == "text/html"));
        assert!(lookup("/display.html").is_some());
        let js = lookup("/js/app.js").expect("app.js");
        assert!(js.metadata.mimetype().contains("javascript"));
        assert!(lookup("/../Cargo.toml").is_none());
        assert!(lookup("/nope.html").is_none());
    }
}
