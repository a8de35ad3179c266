//! The web console (`/ui/`) in a real headless Chromium driven through WebDriver
//! (chromedriver): browse and edit keys, a refused stale save, history and its diff, a
//! live watch, leases, members with a member going down, the rates, and login with auth.
//! Screenshots of each step are kept in `target/test-artifacts/console/`.

use super::harness::{etcdctl_ok, Cluster};
use cairn_testing::Streaming;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A chromedriver started for one test (killed when dropped).
struct Driver {
    _process: Streaming,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for tool in ["chromium", "chromedriver"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()));
            assert!(found, "{tool} is missing: apt-get install -y chromium chromium-driver (./scripts/test does this)");
        }
        let port = cairn_testing::free_port().expect("a free port");
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        let process = Streaming::spawn(cmd);
        cairn_testing::wait_listening(port, "chromedriver").await;
        Driver { _process: process, url: format!("http://127.0.0.1:{port}") }
    }

    /// A new headless browser session.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let args =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"];
        caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector).capabilities(caps).connect(&self.url).await.expect("a WebDriver session")
    }
}

/// Where this test keeps its screenshots.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/console");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("write screenshot");
}

/// The text of the first element matching `css`, once `ok` holds of it (15 s at most).
async fn wait_text(b: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        if let Ok(e) = b.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        assert!(Instant::now() < deadline, "{css}: still {last:?} after 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until the script returns true (15 s at most).
async fn poll(b: &Client, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.execute(script, vec![]).await.ok() != Some(serde_json::Value::Bool(true)) {
        assert!(Instant::now() < deadline, "{script}: still not true after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(b: &Client, css: &str) {
    let e = b.wait().at_most(Duration::from_secs(15)).for_element(Locator::Css(css)).await;
    e.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(b: &Client, css: &str, text: &str) {
    let e = b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn value_of(b: &Client, css: &str) -> String {
    let e = b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    e.prop("value").await.expect("value").unwrap_or_default()
}

/// The console's whole tour; the browser session is closed whatever happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let driver = Driver::start().await;
    let b = driver.browser().await;
    let tour = tokio::spawn(tour(b.clone()));
    let result = tour.await;
    let _ = b.close().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn tour(b: Client) {
    let mut c = Cluster::start(3, &[]).await;
    let ep = c.endpoints();
    for (k, v) in [("/app/color", "blue\nlight"), ("/app/size", "10"), ("/registry/pods/a", "{}"), ("top", "1")] {
        etcdctl_ok(&ep, &["put", k, v]);
    }
    let base = c.members[0].client_url.trim_end_matches('/').to_string();
    b.goto(&format!("{base}/ui")).await.expect("open the console");

    // Keys: the tree lists them; a click opens the value etcdctl wrote.
    wait_text(&b, "#tree-status", |t| t.starts_with("4 keys")).await;
    click(&b, "#tree a[data-key='/app/color']").await;
    wait_text(&b, "#key-meta", |t| t.contains("version 1")).await;
    assert_eq!(value_of(&b, "#value").await, "blue\nlight");
    screenshot(&b, "01-keys").await;

    // Edit and save: etcdctl sees the new value.
    type_into(&b, "#value", "blue\ndark").await;
    click(&b, "#save").await;
    wait_text(&b, "#key-status", |t| t.starts_with("saved at revision")).await;
    assert_eq!(etcdctl_ok(&ep, &["get", "/app/color", "--print-value-only"]).trim(), "blue\ndark");

    // Someone else writes meanwhile: the stale save is refused, nothing is lost.
    etcdctl_ok(&ep, &["put", "/app/color", "red"]);
    type_into(&b, "#value", "mine").await;
    click(&b, "#save").await;
    wait_text(&b, "#key-status", |t| t.contains("changed by someone else")).await;
    assert_eq!(etcdctl_ok(&ep, &["get", "/app/color", "--print-value-only"]).trim(), "red");
    screenshot(&b, "02-stale-save-refused").await;

    // History: three versions; the default diff is the last change (red replaced the rest).
    click(&b, "#reload").await;
    wait_text(&b, "#key-meta", |t| t.contains("version 3")).await;
    let rows = wait_text(&b, "#history tbody", |t| t.lines().count() >= 3).await;
    assert!(rows.contains("blue") && rows.contains("red"), "{rows}");
    let diff = wait_text(&b, "#diff", |t| t.contains("+ red")).await;
    assert!(diff.contains("- blue") && diff.contains("- dark"), "{diff}");
    screenshot(&b, "03-history-diff").await;

    // A new key, created only if absent.
    type_into(&b, "#new-key", "/app/new").await;
    click(&b, "#new").await;
    type_into(&b, "#value", "fresh").await;
    click(&b, "#save").await;
    wait_text(&b, "#key-status", |t| t.starts_with("saved")).await;
    assert_eq!(etcdctl_ok(&ep, &["get", "/app/new", "--print-value-only"]).trim(), "fresh");

    // Watch: a live event from etcdctl shows up.
    click(&b, "nav button[data-tab='watch']").await;
    type_into(&b, "#watch-prefix", "/app/").await;
    click(&b, "#watch-start").await;
    wait_text(&b, "#watch-status", |t| t.starts_with("watching")).await;
    etcdctl_ok(&ep, &["put", "/app/size", "11"]);
    let events = wait_text(&b, "#events tbody", |t| t.contains("/app/size")).await;
    assert!(events.contains("put") && events.contains("11"), "{events}");
    screenshot(&b, "04-watch").await;
    click(&b, "#watch-stop").await;

    // The browser's own EventSource reads the keys API's event stream too.
    let open = "window.seen = []; window.es = new EventSource('/kv//app/?prefix&watch'); \
                window.es.addEventListener('created', () => { window.ready = true; }); \
                window.es.addEventListener('put', (e) => window.seen.push([e.lastEventId, JSON.parse(e.data).key]));";
    b.execute(open, vec![]).await.expect("open an EventSource");
    poll(&b, "return window.ready === true").await;
    let put = etcdctl_ok(&ep, &["put", "/app/es", "1", "-w", "json"]);
    let rev = super::harness::json(&put)["header"]["revision"].as_i64().expect("revision");
    poll(&b, "return window.seen.length > 0").await;
    let seen = b.execute("window.es.close(); return window.seen", vec![]).await.expect("events");
    assert_eq!(seen, json!([[rev.to_string(), "/app/es"]]));

    // Leases: the lease, its TTL and its key.
    let granted = etcdctl_ok(&ep, &["lease", "grant", "300"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(&ep, &["put", "/svc/api", "10.0.0.5", "--lease", &lease]);
    click(&b, "nav button[data-tab='leases']").await;
    let row = wait_text(&b, &format!("#leases tr[data-lease='{lease}']"), |t| t.contains("/svc/api")).await;
    assert!(row.contains("300 s"), "{row}");
    screenshot(&b, "05-leases").await;

    // Cluster: three members, one leader; a member killed shows as down.
    click(&b, "nav button[data-tab='cluster']").await;
    wait_text(&b, "#cluster-status", |t| t == "3 members, 3 answering").await;
    let table = wait_text(&b, "#members tbody", |t| t.contains("leader")).await;
    assert_eq!(table.matches("leader").count(), 1, "{table}");
    let alarms = wait_text(&b, "#alarms", |t| !t.is_empty()).await;
    assert_eq!(alarms, "none");
    let victim = if c.leader().await == 2 { 1 } else { 2 };
    c.members[victim].kill();
    let name = format!("#members tr[data-member='{}'] td.state", c.members[victim].name);
    wait_text(&b, &name, |t| t == "down").await;
    wait_text(&b, "#cluster-status", |t| t == "3 members, 2 answering").await;
    screenshot(&b, "06-member-down").await;

    // The rates: writes per second from /metrics, drawn as they come.
    for i in 0..20 {
        etcdctl_ok(&c.endpoints(), &["put", "/load", &i.to_string()]);
    }
    wait_text(&b, "#rate-writes", |t| t.parse::<f64>().is_ok_and(|v| v > 0.0)).await;

    // Auth: the console asks to log in, then works as that user.
    let alive = c.endpoints();
    for args in [&["user", "add", "root:rootpw"][..], &["auth", "enable"]] {
        etcdctl_ok(&alive, args);
    }
    click(&b, "nav button[data-tab='keys']").await;
    click(&b, "#refresh").await;
    wait_text(&b, "#login-why", |t| t.contains("log in")).await;
    assert!(b.find(Locator::Css("#login")).await.expect("login form").is_displayed().await.expect("displayed"));
    type_into(&b, "#login-user", "root").await;
    type_into(&b, "#login-password", "rootpw").await;
    click(&b, "#login-go").await;
    wait_text(&b, "#who-name", |t| t == "logged in as root").await;
    wait_text(&b, "#tree-status", |t| t.contains("keys at revision")).await;
    screenshot(&b, "07-logged-in").await;
}

/// `--enable-ui=false` turns the console off; the keys API stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_can_be_turned_off() {
    let off = Cluster::start(1, &["--enable-ui=false"]).await;
    let base = off.members[0].client_url.trim_end_matches('/').to_string();
    let get = |path: &str| reqwest::get(format!("{base}{path}"));
    let r = get("/ui/").await.expect("GET /ui/");
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.expect("body").contains("--enable-ui=false"));
    assert_eq!(get("/kv/?prefix&count").await.expect("GET /kv/").status().as_u16(), 200);
    // On by default for this machine: the page and its files.
    let on = Cluster::start(1, &[]).await;
    let base = on.members[0].client_url.trim_end_matches('/').to_string();
    for (path, kind) in [("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")] {
        let r = reqwest::get(format!("{base}{path}")).await.expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }
}
