//! `seckill bench --report FILE.html` (issue 11): a real run against a real
//! server writes one self-contained page, and headless Chromium (Debian's
//! `chromium`, which `scripts/test.sh` installs) loads it without an error
//! and renders it to a PNG that shows the figures.

mod support;

use std::path::Path;
use std::process::Command;

use support::{config, RedisServer, Seckill, SECRET};

const TITLES: [&str; 4] = [
    "Requests and wins per second",
    "Latency by percentile",
    "Latency histogram",
    "Answers by code over time",
];

/// Headless Chromium as the machine allows it (root: no sandbox; a closed
/// network: nothing in the background), with a fresh profile in `dir`.
fn chromium(dir: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", dir.join("profile").display()));
    c
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn a_bench_report_loads_in_chromium_and_shows_its_figures() {
    let redis = RedisServer::with_e1(&[("g1", 200)]);
    let s = Seckill::start_ready(&config(&redis));
    let dir = tempfile::tempdir().expect("temp dir");
    let html = dir.path().join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_seckill"))
        .args(["bench", "--event", "e1", "--goods", "g1"])
        .args(["--users", "3000", "--concurrency", "16", "--secret", SECRET])
        .arg("--url")
        .arg(format!("http://{}", s.addr))
        .arg("--report")
        .arg(&html)
        .output()
        .expect("seckill bench runs");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("wins         200 <= stock 200"), "{said}");
    let page = std::fs::read_to_string(&html).expect("the report");
    assert!(page.contains("200 of a stock of 200 before the run"));

    // The DOM after load: every figure's title and its drawing.
    let dom = chromium(dir.path())
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium is installed (scripts/test.sh installs Debian's chromium)");
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(dom.status.success(), "chromium --dump-dom: {log}");
    for title in TITLES {
        assert!(
            dom_text.contains(&format!("<figcaption>{title}</figcaption>")),
            "{title} not in the loaded page"
        );
    }
    assert_eq!(dom_text.matches("<svg").count(), 4, "four drawings");
    // Nothing the page asked for failed, and no console error.
    for bad in ["CONSOLE", "Failed to load", "net::ERR_FILE", "Uncaught"] {
        assert!(
            !log.lines().any(|l| l.contains(bad)),
            "chromium logged {bad:?}:\n{log}"
        );
    }

    // The picture.
    let png = dir.path().join("report.png");
    let shot = chromium(dir.path())
        .arg("--window-size=960,1720")
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    assert!(
        shot.status.success(),
        "chromium --screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("the PNG");
    assert_eq!(png_size(&bytes), (960, 1720));
    // A blank page compresses to a few KiB; four figures with text do not.
    assert!(
        bytes.len() > 30_000,
        "{} bytes: a blank picture?",
        bytes.len()
    );
}
