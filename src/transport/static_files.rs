//! `--static DIR`: the files of a web page served at `/`, beside `/ws`, so a pack's
//! page and its socket share one origin and need nothing else to be deployed.
//!
//! Every other route takes precedence: this is the router's fallback. What it serves:
//!
//! - `GET` and `HEAD` only (405 otherwise); the query string is ignored.
//! - Only files inside DIR: the path is percent-decoded one segment at a time, a
//!   segment that is `..`, `.`, starts with a dot (`.git`, `.env`) or holds a `/`, `\`
//!   or NUL after decoding is refused, and the file found is canonicalized (symlinks
//!   resolved) and must still be under DIR's canonical path: a symlink that leads out
//!   of DIR is a 404 like a file that is not there. Nothing says why, on purpose.
//! - A directory: `index.html` in it; without the trailing slash, a redirect to it
//!   first, so the page's relative URLs resolve against the directory.
//! - Files up to [`MAX_FILE_BYTES`], read whole; a larger one is refused (403) rather
//!   than read into memory: a page's assets are small, and this is not a file server.
//! - `Content-Type` from the extension (`application/octet-stream` otherwise) and
//!   `X-Content-Type-Options: nosniff`, so a browser never guesses a script type.
//! - Caching: an `ETag` (a hash of the content, so every node of a cluster gives the
//!   same one for the same file, which mtimes would not) with `If-None-Match` → 304.
//!   HTML gets `Cache-Control: no-cache`: always revalidated, so a new deploy of the
//!   page is seen at the next load. Other files `max-age=300`: their names carry no
//!   content hash, so a long lifetime would keep a stale script beside a new page for
//!   that long; five minutes saves the requests of a session and bounds that mismatch.
//!
//! Not `tower-http`'s `ServeDir`: it refuses `..` but follows symlinks out of the
//! directory, serves dotfiles, and has neither the size bound nor this cache policy.

use std::io::Read;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The largest file served.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The directory whose files are served, canonicalized once at startup.
#[derive(Debug)]
pub struct StaticFiles {
    root: PathBuf,
}

impl StaticFiles {
    /// Fails when `dir` is not a readable directory, so a typo stops the server at start.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a request path names, or why none is served.
    fn resolve(&self, path: &str) -> Result<Found, StatusCode> {
        let mut file = self.root.clone();
        let mut segments = path.split('/');
        // The path of an origin-form request starts with `/`: the first segment is empty.
        if segments.next() != Some("") {
            return Err(StatusCode::BAD_REQUEST);
        }
        for raw in segments {
            if raw.is_empty() {
                continue;
            }
            let segment = percent_decode(raw).ok_or(StatusCode::BAD_REQUEST)?;
            if segment.starts_with('.') || segment.contains(['/', '\\', '\0']) {
                return Err(StatusCode::NOT_FOUND);
            }
            file.push(segment);
        }
        let inside = |p: &Path| -> Result<PathBuf, StatusCode> {
            let canonical = p.canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
            if canonical.starts_with(&self.root) {
                Ok(canonical)
            } else {
                Err(StatusCode::NOT_FOUND)
            }
        };
        let found = inside(&file)?;
        if found.is_dir() {
            if !path.ends_with('/') {
                return Ok(Found::Directory);
            }
            let index = inside(&found.join("index.html"))?;
            return if index.is_file() {
                Ok(Found::File(index))
            } else {
                Err(StatusCode::NOT_FOUND)
            };
        }
        // `/file.js/` names a directory that is not there.
        if found.is_file() && !path.ends_with('/') {
            Ok(Found::File(found))
        } else {
            Err(StatusCode::NOT_FOUND)
        }
    }
}

enum Found {
    File(PathBuf),
    /// A directory named without its trailing slash.
    Directory,
}

/// The router's fallback when `--static` is given.
pub(super) async fn serve(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(files) = state.static_files.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let path = uri.path().to_string();
    // Canonicalizing and reading touch the disk: off the runtime's workers.
    let read = tokio::task::spawn_blocking(move || {
        let file = match files.resolve(&path)? {
            Found::Directory => return Ok(Outcome::Redirect(format!("{path}/"))),
            Found::File(file) => file,
        };
        read_bounded(&file).map(|bytes| Outcome::File(file, bytes))
    })
    .await;
    let (file, bytes) = match read {
        Ok(Ok(Outcome::File(file, bytes))) => (file, bytes),
        Ok(Ok(Outcome::Redirect(to))) => {
            return (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
        }
        Ok(Err(status)) => return status.into_response(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let content_type = content_type(&file);
    let etag = format!("\"{:016x}\"", fnv1a(&bytes));
    let cache = if content_type.starts_with("text/html") {
        "no-cache"
    } else {
        "public, max-age=300"
    };
    let mut response = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let len = bytes.len();
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(bytes)
        };
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

enum Outcome {
    File(PathBuf, Vec<u8>),
    Redirect(String),
}

fn read_bounded(file: &Path) -> Result<Vec<u8>, StatusCode> {
    let f = std::fs::File::open(file).map_err(|_| StatusCode::NOT_FOUND)?;
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file that is too large, whatever its
    // metadata said (it may grow while being read).
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| StatusCode::NOT_FOUND)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        tracing::warn!(file = %file.display(), limit = MAX_FILE_BYTES, "static file too large to serve");
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(bytes)
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn content_type(file: &Path) -> &'static str {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// FNV-1a, 64 bits: stable across builds and nodes, which is all an ETag needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%2e%2E").as_deref(), Some(".."));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a/B.JS")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("x.mjs")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("x.wasm")),
            "application/octet-stream"
        );
        assert_eq!(
            content_type(Path::new("Makefile")),
            "application/octet-stream"
        );
    }
}
