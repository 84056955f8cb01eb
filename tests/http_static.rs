//! `--static DIR`: a web page's files served at `/`: content types, caching, index
//! files, HEAD, the size bound, route precedence, and no way out of DIR (`..`, encoded
//! dots and slashes, absolute paths, dotfiles, symlinks that lead outside).

mod support;

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wss_engine::transport::static_files::{StaticFiles, MAX_FILE_BYTES};

use support::binary::spawn_binary;
use support::cli::run;
use support::inprocess::{start_with, TestServer};
use support::write_pack;

const PACK: &str = r#"
events:
  ping:
    scope: local
    schema: {}
    script: reply("pong");
"#;

/// What a raw HTTP/1.1 exchange gave back.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `METHOD target` as written (no client-side normalization of the path, which is
/// the point of the traversal cases) and read the whole answer (bounded).
async fn request(addr: std::net::SocketAddr, method: &str, target: &str, extra: &str) -> Answer {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no answer within 10 s"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().expect("status line")[9..12]
        .parse()
        .expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(server: &TestServer, target: &str) -> Answer {
    request(server.addr, "GET", target, "").await
}

/// A page directory inside a temporary directory that also holds a secret beside it.
struct Site {
    outer: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let outer = tempfile::tempdir().expect("tempdir");
        let site = outer.path().join("site");
        let w = |p: &str, body: &[u8]| {
            let path = site.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        };
        w("index.html", b"<!doctype html><title>home</title>");
        w("app.js", b"console.log('app');");
        w("lib.mjs", b"export const x = 1;");
        w("style.css", b"body{}");
        w("data.json", b"{}");
        w("icon.svg", b"<svg/>");
        w("pic.png", b"\x89PNG");
        w("favicon.ico", b"ico");
        w("notes.txt", b"notes");
        w("app.js.map", b"{}");
        w("blob.bin", b"\0\x01");
        w("sub/index.html", b"<p>sub</p>");
        w("sub/deeper/file.txt", b"deep");
        w("noindex/file.txt", b"x");
        w(".hidden", b"dotfile");
        w("healthz", b"not the health check");
        w("ws/index.html", b"not the socket");
        std::fs::write(outer.path().join("secret.txt"), b"SECRET").unwrap();
        std::fs::create_dir(outer.path().join("outside")).unwrap();
        std::fs::write(outer.path().join("outside/secret.txt"), b"SECRET").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(outer.path().join("secret.txt"), site.join("link-file")).unwrap();
            symlink(outer.path().join("outside"), site.join("link-dir")).unwrap();
            symlink(site.join("notes.txt"), site.join("link-inside.txt")).unwrap();
        }
        Self { outer }
    }

    fn dir(&self) -> std::path::PathBuf {
        self.outer.path().join("site")
    }

    async fn serve(&self) -> TestServer {
        let files = StaticFiles::new(&self.dir()).expect("static dir");
        start_with(PACK, move |c| c.static_files = Some(files)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_have_their_content_type_and_cache_policy() {
    let site = Site::new();
    let server = site.serve().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/lib.mjs", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/icon.svg", "image/svg+xml"),
        ("/pic.png", "image/png"),
        ("/favicon.ico", "image/x-icon"),
        ("/notes.txt", "text/plain; charset=utf-8"),
        ("/app.js.map", "application/json"),
        ("/blob.bin", "application/octet-stream"),
    ] {
        let a = get(&server, path).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
        assert_eq!(a.header("content-type"), Some(content_type), "{path}");
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let cache = a.header("cache-control").unwrap_or_default();
        if content_type.starts_with("text/html") {
            assert_eq!(cache, "no-cache", "{path}");
        } else {
            assert_eq!(cache, "public, max-age=300", "{path}");
        }
        assert!(
            a.header("etag").is_some_and(|e| e.starts_with('"')),
            "{path}"
        );
    }
    let a = get(&server, "/app.js?v=2").await;
    assert_eq!((a.status, a.text().as_str()), (200, "console.log('app');"));
    // A symlink that stays inside the directory is fine.
    #[cfg(unix)]
    assert_eq!(get(&server, "/link-inside.txt").await.text(), "notes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_revalidate_and_head_has_no_body() {
    let site = Site::new();
    let server = site.serve().await;
    let first = get(&server, "/app.js").await;
    let etag = first.header("etag").expect("etag").to_string();
    let again = request(
        server.addr,
        "GET",
        "/app.js",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let other = request(
        server.addr,
        "GET",
        "/app.js",
        "If-None-Match: \"other\"\r\n",
    )
    .await;
    assert_eq!(other.status, 200);

    let head = request(server.addr, "HEAD", "/app.js", "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{head:?}");
    assert_eq!(
        head.header("content-length"),
        Some("console.log('app');".len().to_string().as_str())
    );
    assert_eq!(
        head.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let post = request(server.addr, "POST", "/app.js", "Content-Length: 0\r\n").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_serve_their_index_and_missing_files_are_404() {
    let site = Site::new();
    let server = site.serve().await;
    let a = get(&server, "/sub").await;
    assert_eq!(a.status, 301);
    assert_eq!(a.header("location"), Some("/sub/"));
    assert_eq!(get(&server, "/sub/").await.text(), "<p>sub</p>");
    assert_eq!(get(&server, "/sub/deeper/file.txt").await.text(), "deep");
    assert_eq!(get(&server, "/noindex/").await.status, 404);
    assert_eq!(get(&server, "/missing.js").await.status, 404);
    assert_eq!(get(&server, "/sub/missing/").await.status, 404);
    assert_eq!(get(&server, "/index.html/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outside_the_directory_is_served() {
    let site = Site::new();
    let server = site.serve().await;
    for target in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/.%2e/secret.txt",
        "//etc/passwd",
        "/etc/passwd",
        "/%2fetc%2fpasswd",
        "/.hidden",
        "/%2ehidden",
        "/link-file",
        "/link-dir/secret.txt",
        "/link-dir/",
        "/notes.txt%00.html",
        "/%zz",
    ] {
        let a = get(&server, target).await;
        assert!(
            a.status == 404 || a.status == 400,
            "{target}: {} {}",
            a.status,
            a.text()
        );
        assert!(!a.text().contains("SECRET"), "{target} leaked the secret");
        assert!(!a.text().contains("root:"), "{target} leaked /etc/passwd");
    }
    // An absolute-form request target is only another way to name the same path.
    let a = get(&server, &format!("http://{}/../secret.txt", server.addr)).await;
    assert!(!a.text().contains("SECRET"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_win_over_files_and_large_files_are_refused() {
    let site = Site::new();
    std::fs::write(
        site.dir().join("big.bin"),
        vec![0u8; MAX_FILE_BYTES as usize + 1],
    )
    .unwrap();
    std::fs::write(
        site.dir().join("max.bin"),
        vec![1u8; MAX_FILE_BYTES as usize],
    )
    .unwrap();
    let server = site.serve().await;
    assert_eq!(get(&server, "/healthz").await.text(), "ok");
    let metrics = get(&server, "/metrics").await;
    assert!(metrics
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    // `/ws` is the socket (a plain GET without the upgrade is refused), not ws/index.html.
    let ws = get(&server, "/ws").await;
    assert!(!ws.text().contains("not the socket"), "{ws:?}");
    assert_eq!(get(&server, "/big.bin").await.status, 403);
    let max = get(&server, "/max.bin").await;
    assert_eq!((max.status, max.body.len()), (200, MAX_FILE_BYTES as usize));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_static_nothing_is_served_at_the_root() {
    let server = start_with(PACK, |_| {}).await;
    assert_eq!(get(&server, "/").await.status, 404);
    assert_eq!(get(&server, "/index.html").await.status, 404);
}

#[test]
fn the_binary_takes_the_flag_and_the_environment_variable() {
    let site = Site::new();
    let pack = write_pack(PACK);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let by_flag = spawn_binary(pack.path(), &["--static", site.dir().to_str().unwrap()]);
    let a = runtime.block_on(request(by_flag.addr, "GET", "/notes.txt", ""));
    assert_eq!(a.text(), "notes");
    drop(by_flag);

    std::env::set_var("WSS_STATIC", site.dir());
    let by_env = spawn_binary(pack.path(), &[]);
    std::env::remove_var("WSS_STATIC");
    let a = runtime.block_on(request(by_env.addr, "GET", "/", ""));
    assert!(a.text().contains("<title>home</title>"), "{a:?}");
    drop(by_env);

    let no_such_dir = Path::new(site.outer.path()).join("no-such-dir");
    let missing = run(&[
        "--config",
        pack.path().to_str().expect("a UTF-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--static",
        no_such_dir.to_str().expect("a UTF-8 path"),
    ]);
    assert!(!missing.status.success());
    let stderr = &missing.stderr;
    assert!(stderr.contains("--static"), "{stderr}");
}
