//! `/metrics` as tools read it (SPEC §7): Prometheus' own checker,
//! `promtool check metrics` (Debian's `prometheus` package, which
//! `scripts/test.sh` installs), accepts the exposition with every kind of
//! line in it: answers by route and code (a 4029 among them), the worker's
//! answers, the round-trip histogram, gauges, the limits' and the sink's
//! counters; and every metric the shipped Grafana dashboard
//! (`deploy/grafana-dashboard.json`) queries is one the server exposes.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::pg::PgServer;
use support::{config, eventually, RedisServer, Seckill};

#[test]
fn promtool_accepts_the_metrics() {
    let redis = RedisServer::with_e1(&[("g1", 1)]);
    let pg = PgServer::start();
    let mut c = config(&redis);
    c.limits.per_user_per_s = 1;
    c.limits.burst = 1;
    c.sink.url = pg.database("metrics");
    let s = Seckill::start_ready(&c);
    s.client()
        .buy("u1", "e1", "g1")
        .assert(200, 0, "ok", "close");
    s.client()
        .buy("u2", "e1", "g1")
        .assert(200, 1001, "no stock", "keep-alive");
    let mut limited = s.client();
    limited.buy("u3", "e1", "g1");
    limited
        .buy("u3", "e1", "g1")
        .assert(429, 4029, "too many requests", "keep-alive");
    s.client().get("/nope", None);
    eventually(
        std::time::Duration::from_secs(10),
        "the sale persisted",
        || s.metric("seckill_sink_persisted_total") == 1.0,
    );
    s.wait_metric(
        "seckill_sink_lag_orders 0",
        std::time::Duration::from_secs(10),
    );
    let text = s.metrics();
    for line in [
        "seckill_limited_total{key=\"user\"} 1",
        "seckill_worker_responses_total{code=\"0\"} 1",
        "seckill_sink_lag_orders 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    dashboard_queries_only_what_is_exposed(&text);
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
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}\non:\n{text}",
        out.status
    );
}

/// Every `seckill_*` name in the dashboard's queries is a metric of `text`
/// (a histogram's `_bucket` by its family's name), and every panel says
/// what it shows.
fn dashboard_queries_only_what_is_exposed(text: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5, "the sale's key panels");
    let mut queried = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            for (i, _) in expr.match_indices("seckill_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = name.strip_suffix("_bucket").unwrap_or(&name);
                assert!(
                    families.contains(&family),
                    "{title}: {name} is not in /metrics"
                );
                queried.push(family.to_string());
            }
        }
    }
    for key in [
        "seckill_responses_total",
        "seckill_queue_depth",
        "seckill_redis_round_trip_seconds",
        "seckill_stock_share",
        "seckill_sink_lag_orders",
    ] {
        assert!(queried.iter().any(|q| q == key), "no panel shows {key}");
    }
}
