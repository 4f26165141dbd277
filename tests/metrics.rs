//! `/metrics` as tools read it (SPEC §7): Prometheus' own checker,
//! `promtool check metrics` (Debian's `prometheus` package, which
//! `scripts/test.sh` installs), accepts the exposition with every kind of
//! line in it: answers by route and code (a 4029 among them), the worker's
//! answers, the round-trip histogram, gauges, the limits' counters.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{config, RedisServer, Seckill};

#[test]
fn promtool_accepts_the_metrics() {
    let redis = RedisServer::with_e1(&[("g1", 1)]);
    let mut c = config(&redis);
    c.limits.per_user_per_s = 1;
    c.limits.burst = 1;
    let s = Seckill::start_ready(&c);
    s.client().buy("u1", "e1", "g1").assert(200, 0, "ok", "close");
    s.client()
        .buy("u2", "e1", "g1")
        .assert(200, 1001, "no stock", "keep-alive");
    let mut limited = s.client();
    limited.buy("u3", "e1", "g1");
    limited
        .buy("u3", "e1", "g1")
        .assert(429, 4029, "too many requests", "keep-alive");
    s.client().get("/nope", None);
    let text = s.metrics();
    for line in [
        "seckill_limited_total{key=\"user\"} 1",
        "seckill_worker_responses_total{code=\"0\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test.sh installs Debian's prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the metrics");
    let out = promtool.wait_with_output().expect("promtool ran");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}\non:\n{text}",
        out.status
    );
}
