//! Confab's web client: the page, scripts and styles in `web/assets/`,
//! embedded in the binary with `include_bytes!` (no build step: the
//! browser loads the ES modules as they are), and the routes that serve
//! them: `/` (the page) and `/app/<file>`; and the API's documents,
//! `/openapi.json` and `/asyncapi.json` (from `docs/`).
//!
//! ## The happy path
//! A browser asks for `/`; the page loads `/app/style.css` and
//! `/app/app.js`, which imports `/app/api.js` and `/app/sha256.js`. From
//! there everything is the public API: sign-up and log-in over HTTP, the
//! token kept in `localStorage`, live events over `/v1/ws` resumed from
//! the last event's cursor. Each answer carries a strong `ETag` (the
//! SHA-256 of the bytes) and `Cache-Control: no-cache`, so a browser
//! revalidates and gets `304` until the binary changes.
//!
//! ## Failures and defences
//! - Every asset is public, like `/healthz`: the page holds no data, and
//!   every API call it makes needs the token.
//! - `Content-Security-Policy` allows scripts and styles from this origin
//!   only (no inline script, no `eval`), frames from nowhere; images and
//!   connections may go to other origins because signed media URLs may
//!   point at an S3 endpoint. The scripts put server text into the page
//!   with `textContent` only. `X-Content-Type-Options: nosniff`,
//!   `Referrer-Policy: no-referrer` (signed URLs carry signatures).
//! - An unknown `/app/…` path falls through to the API's 404 in its
//!   error shape.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every file of the web client.
pub const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", bytes: include_bytes!("../assets/index.html") },
    Asset { path: "/app/app.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../assets/app.js") },
    Asset { path: "/app/api.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../assets/api.js") },
    Asset { path: "/app/sha256.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../assets/sha256.js") },
    Asset { path: "/app/style.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("../assets/style.css") },
    Asset { path: "/app/favicon.svg", content_type: "image/svg+xml", bytes: include_bytes!("../assets/favicon.svg") },
    // The API's documents (written by docs/api-tools/, checked against the
    // routes and frames by the gateway's tests).
    Asset { path: "/openapi.json", content_type: "application/json", bytes: include_bytes!("../../docs/openapi.json") },
    Asset { path: "/asyncapi.json", content_type: "application/json", bytes: include_bytes!("../../docs/asyncapi.json") },
];

/// The page's Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: https: http:; \
     connect-src 'self' ws: wss: https: http:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The routes serving [`ASSETS`].
pub fn routes() -> Router {
    let mut router = Router::new();
    for (index, asset) in ASSETS.iter().enumerate() {
        router = router.route(asset.path, get(move |headers: HeaderMap| async move { serve(index, &headers) }));
    }
    router
}

fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.bytes);
                let hex: String = digest.iter().take(16).map(|byte| format!("{byte:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = match fresh {
        true => StatusCode::NOT_MODIFIED.into_response(),
        false => ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("an ETag is ASCII"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if asset.content_type.starts_with("text/html") {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        routes().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn the_page_and_its_modules_are_served_with_their_types_and_policy() {
        let page = get("/", None).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let policy = page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
        assert_eq!(page.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let script = get("/app/app.js", None).await;
        assert_eq!(script.status(), StatusCode::OK);
        assert_eq!(script.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8", "modules need a JavaScript type");
        assert_eq!(get("/app/missing.js", None).await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_browser_revalidating_an_unchanged_asset_gets_304() {
        let first = get("/app/style.css", None).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_string();
        let again = get("/app/style.css", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("/app/style.css", Some("\"something-else\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn every_file_in_assets_is_embedded_and_every_import_resolves() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS
            .iter()
            .filter(|asset| asset.path == "/" || asset.path.starts_with("/app/"))
            .map(|asset| if asset.path == "/" { "index.html".into() } else { asset.path.trim_start_matches("/app/").to_string() })
            .collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "a file in web/assets is not in ASSETS (or the other way round)");
        // Each `from './x.js'` and each `/app/…` the page names is served.
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for (marker, prefix) in [("from './", "/app/"), ("\"/app/", "/app/")] {
                for piece in text.split(marker).skip(1) {
                    let name = piece.split(['\'', '"']).next().unwrap();
                    let path = format!("{prefix}{name}");
                    assert!(ASSETS.iter().any(|other| other.path == path), "{} refers to {path}, which is not served", asset.path);
                }
            }
        }
    }
}
