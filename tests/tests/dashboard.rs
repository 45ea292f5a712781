//! The admin dashboard in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/dashboard.mjs`), against the example app with its admin surface, over HTTP
//! on loopback. It sees the function rows and the chart, looks up and lists a key carrying
//! markup (shown as text), purges the tag `posts`, and the next `GET /posts` misses.
//! `scripts/test` installs Chromium and playwright-core when they are missing
//! (`scripts/browser-setup`).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use examples::app::{router, App, Config};

const TOKEN: &str = "dashboard-test-token";

fn browser_tools() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    assert!(
        chromium.exists() && dir.join("node_modules/playwright-core").exists(),
        "the browser test needs Chromium ({}) and playwright-core in {}: run scripts/browser-setup (scripts/test does)",
        chromium.display(),
        dir.display()
    );
    (dir, chromium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uses_the_dashboard_in_chromium() {
    let (dir, chromium) = browser_tools();
    let config = Config { admin_token: Some(TOKEN.to_owned()), ..Config::local() };
    let app = App::new(&config).unwrap();
    let routes = router(app.clone()).nest_service("/admin", cache_runtime::admin::router(app.cache.clone(), TOKEN));
    let base = support::serve(routes).await;
    let http = reqwest::Client::new();
    // A miss and a hit of the list: its row says 50 %.
    for expected in ["MISS", "HIT"] {
        let r = http.get(format!("{base}/posts")).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], expected);
    }
    // A key carrying markup, as user input in a key would.
    let evil = "<script>alert('xss')</script><img src=x onerror=alert(1)>";
    app.cache.set(evil, &"user input".to_owned(), Duration::from_secs(300)).await.unwrap();

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let reads_before = app.db.reads();
    let output = tokio::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .args([&base, TOKEN, screenshot.to_str().unwrap()])
        .env("CHROMIUM", &chromium)
        .current_dir(&dir)
        .output()
        .await
        .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the dashboard run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["seen"]["looked_up"], evil);
    assert_eq!(seen["seen"]["next_x_cache"], "MISS");
    // The browser's `GET /posts` after the purge reached the database.
    assert!(app.db.reads() > reads_before, "the purged list was read from the database again");
    assert!(screenshot.exists());
    println!("{seen}\nscreenshot: {}", screenshot.display());
}
