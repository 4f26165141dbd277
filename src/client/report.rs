//! `seckill bench --report FILE.html`: a picture of a run.
//!
//! In: every answer of the run as a `Sample` (when it ended, how long it
//! took, its code or an error), the run's length and the stock shown before
//! it. Out: one self-contained HTML page — inline CSS and inline SVG, no
//! script, no font, nothing fetched — with four figures:
//! 1. requests and wins per second over time, the last win marked (when the
//!    sale sold out);
//! 2. the latency percentile curve, p50 to p99.99, on a log scale;
//! 3. the latency histogram, log-spaced buckets, p50/p90/p99/p99.9 marked;
//! 4. answers by code over time, stacked.
//!
//! The figures are drawn here by hand: a few rectangles, polylines and text
//! on fixed axes need no charting library, and the page stays readable as
//! source.
//! Never: reads the clock or the network; it only formats what it is given.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// One answer of the run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it ended, since the run began (ms).
    pub at_ms: u32,
    /// How long it took (µs).
    pub latency_us: u32,
    /// Its code, or `ERROR` when no answer came.
    pub code: i64,
}

/// `Sample::code` of a request that got no answer (a timeout, a reset).
pub const ERROR: i64 = -1;

/// What the page says of the run besides its samples.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// One line: the URL, event, goods, users, connections, mode.
    pub title: String,
    /// The run's length.
    pub elapsed: Duration,
    /// The goods' `stock_left` before the run, if known.
    pub stock_before: Option<i64>,
}

// The plot area of every figure, in SVG units.
const W: f64 = 860.0;
const H: f64 = 260.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;
const RIGHT: f64 = 20.0;

/// Colours by code: wins green, sold out grey, Redis and queue trouble
/// orange and red, client errors purple, no answer black.
fn colour(code: i64) -> &'static str {
    match code {
        0 => "#2e7d32",
        1001 => "#9e9e9e",
        1002 => "#e65100",
        1003 => "#c62828",
        1004 => "#f9a825",
        1005 => "#1565c0",
        4029 => "#6a1b9a",
        ERROR => "#000000",
        c if c >= 4000 => "#ad1457",
        _ => "#00838f",
    }
}

fn label(code: i64) -> String {
    match code {
        ERROR => "no answer".to_string(),
        0 => "0 won".to_string(),
        1001 => "1001 no stock".to_string(),
        1002 => "1002 redis error".to_string(),
        1003 => "1003 timeout".to_string(),
        1004 => "1004 busy".to_string(),
        1005 => "1005 already".to_string(),
        4029 => "4029 limited".to_string(),
        c => c.to_string(),
    }
}

/// The `p` quantile of sorted values (ceiling rank), 0 when empty.
fn quantile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

/// A round step for an axis that spans `max`, about `ticks` of them.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Formats an axis number without a needless fraction.
fn num(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An SVG figure with its title, axes and y grid; `body` draws in plot
/// coordinates (x from LEFT to W-RIGHT, y from TOP to H-BOTTOM).
struct Figure {
    svg: String,
}

impl Figure {
    fn new(id: &str, title: &str) -> Figure {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<figure id="{id}"><figcaption>{title}</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{title}">"#
        );
        Figure { svg }
    }

    fn px(x: f64) -> f64 {
        LEFT + x * (W - LEFT - RIGHT)
    }

    fn py(y: f64) -> f64 {
        H - BOTTOM - y * (H - TOP - BOTTOM)
    }

    /// A y axis from 0 to `max` (linear) with grid lines and `unit`.
    fn y_axis(&mut self, max: f64, unit: &str) {
        let step = nice_step(max, 5.0);
        let mut v = 0.0;
        while v <= max * 1.0001 {
            let y = Self::py(v / max);
            let _ = write!(
                self.svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                num(v)
            );
            v += step;
        }
        let _ = write!(
            self.svg,
            r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle" class="unit">{unit}</text>"#,
            (TOP + H - BOTTOM) / 2.0,
            (TOP + H - BOTTOM) / 2.0
        );
    }

    /// An x axis of seconds from 0 to `max_s`.
    fn x_seconds(&mut self, max_s: f64) {
        let step = nice_step(max_s, 8.0);
        let mut v = 0.0;
        while v <= max_s * 1.0001 {
            let x = Self::px(v / max_s);
            let _ = write!(
                self.svg,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle" class="tick">{}</text>"#,
                H - BOTTOM + 16.0,
                num(v)
            );
            v += step;
        }
        self.x_unit("seconds since the run began");
    }

    fn x_unit(&mut self, unit: &str) {
        let _ = write!(
            self.svg,
            r#"<text x="{}" y="{}" text-anchor="middle" class="unit">{unit}</text>"#,
            (LEFT + W - RIGHT) / 2.0,
            H - 10.0
        );
    }

    fn frame(&mut self) {
        let _ = write!(
            self.svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#9e9e9e"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
    }

    fn polyline(&mut self, points: &[(f64, f64)], stroke: &str) {
        self.svg
            .push_str(r#"<polyline fill="none" stroke-width="2" stroke=""#);
        self.svg.push_str(stroke);
        self.svg.push_str(r#"" points=""#);
        for (x, y) in points {
            let _ = write!(self.svg, "{:.1},{:.1} ", Self::px(*x), Self::py(*y));
        }
        self.svg.push_str(r#""/>"#);
    }

    /// A vertical marker at plot x `x` (0..1) with a label.
    fn marker(&mut self, x: f64, text: &str, colour: &str) {
        let px = Self::px(x);
        let _ = write!(
            self.svg,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" class="mark" fill="{colour}">{text}</text>"#,
            H - BOTTOM,
            px + 4.0,
            TOP + 14.0
        );
    }

    /// A legend row of (colour, label) pairs under the title.
    fn legend(&mut self, items: &[(&str, String)]) {
        self.svg.push_str("</svg><div class=\"legend\">");
        for (c, l) in items {
            let _ = write!(
                self.svg,
                r#"<span><i style="background:{c}"></i>{l}</span>"#
            );
        }
        self.svg.push_str("</div></figure>");
    }
}

/// Buckets of the timeline: about 120 of them, at least 50 ms wide.
fn bucket_ms(elapsed: Duration) -> u32 {
    let total = elapsed.as_millis().max(1) as f64;
    let raw = (total / 120.0).max(50.0);
    nice_step(raw, 1.0).max(50.0) as u32
}

/// The page for `samples` (in any order).
pub fn render(info: &RunInfo, samples: &[Sample]) -> String {
    let mut latencies: Vec<u32> = samples
        .iter()
        .filter(|s| s.code != ERROR)
        .map(|s| s.latency_us)
        .collect();
    latencies.sort_unstable();
    let answered = latencies.len();
    let elapsed_s = info.elapsed.as_secs_f64().max(1e-3);
    let wins = samples.iter().filter(|s| s.code == 0).count();
    let last_win_ms = samples
        .iter()
        .filter(|s| s.code == 0)
        .map(|s| s.at_ms)
        .max();
    let mut codes: BTreeMap<i64, usize> = BTreeMap::new();
    for s in samples {
        *codes.entry(s.code).or_default() += 1;
    }
    let q = |p| ms(quantile(&latencies, p));
    let (p50, p90, p99, p999) = (q(0.5), q(0.9), q(0.99), q(0.999));
    let max = latencies.last().map_or(0.0, |us| ms(*us));

    let mut html = String::with_capacity(64 * 1024);
    html.push_str(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>seckill bench report</title>
<style>
body{font-family:sans-serif;margin:24px;color:#212121;max-width:900px}
h1{font-size:20px;margin:0 0 4px}
p.run{color:#616161;margin:0 0 16px}
table.sum{border-collapse:collapse;margin:0 0 20px}
table.sum td{padding:3px 14px 3px 0}
table.sum td:first-child{color:#616161}
figure{margin:0 0 26px}
figcaption{font-weight:bold;margin:0 0 6px}
svg{display:block;background:#fff}
.tick{font-size:11px;fill:#616161}
.unit{font-size:12px;fill:#424242}
.mark{font-size:12px}
.legend span{display:inline-block;margin:4px 14px 0 0;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px}
</style></head><body>
<h1>seckill bench report</h1>
"#,
    );
    let _ = writeln!(html, "<p class=\"run\">{}</p>", escape(&info.title));
    html.push_str("<table class=\"sum\">");
    let mut row = |k: &str, v: String| {
        let _ = write!(html, "<tr><td>{k}</td><td>{}</td></tr>", escape(&v));
    };
    row(
        "responses",
        format!(
            "{answered} in {elapsed_s:.3} s: {:.0} requests/s",
            answered as f64 / elapsed_s
        ),
    );
    row(
        "latency",
        format!("p50 {p50:.3} ms · p90 {p90:.3} ms · p99 {p99:.3} ms · p99.9 {p999:.3} ms · max {max:.3} ms"),
    );
    row(
        "wins",
        match info.stock_before {
            Some(s) => format!(
                "{wins} of a stock of {s} before the run: {}",
                if wins as i64 <= s {
                    "within the stock"
                } else {
                    "OVER THE STOCK"
                }
            ),
            None => format!("{wins} (stock before the run unknown)"),
        },
    );
    row(
        "sold out",
        match last_win_ms {
            Some(at) => format!("last win at {:.3} s", f64::from(at) / 1000.0),
            None => "no win".to_string(),
        },
    );
    row(
        "codes",
        codes
            .iter()
            .map(|(c, n)| format!("{}: {n}", label(*c)))
            .collect::<Vec<_>>()
            .join(" · "),
    );
    html.push_str("</table>\n");

    // Timeline buckets.
    let width = bucket_ms(info.elapsed);
    let span_ms = (info.elapsed.as_millis() as u32)
        .max(samples.iter().map(|s| s.at_ms).max().unwrap_or(0))
        .max(1);
    let n = (span_ms / width + 1) as usize;
    let mut all = vec![0u32; n];
    let mut won = vec![0u32; n];
    let mut by_code: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for s in samples {
        let b = ((s.at_ms / width) as usize).min(n - 1);
        all[b] += 1;
        if s.code == 0 {
            won[b] += 1;
        }
        by_code.entry(s.code).or_insert_with(|| vec![0; n])[b] += 1;
    }
    let per_s = 1000.0 / f64::from(width);
    let span_s = f64::from(n as u32 * width) / 1000.0;
    let x_of = |b: usize| (b as f64 + 0.5) / n as f64;

    // 1. Requests and wins per second.
    let peak = all.iter().copied().max().unwrap_or(0).max(1) as f64 * per_s;
    let mut f = Figure::new("rate", "Requests and wins per second");
    f.y_axis(peak, "per second");
    f.x_seconds(span_s);
    let line = |v: &[u32]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(b, c)| (x_of(b), f64::from(*c) * per_s / peak))
            .collect()
    };
    f.polyline(&line(&all), "#1565c0");
    f.polyline(&line(&won), colour(0));
    if let Some(at) = last_win_ms {
        f.marker(
            f64::from(at) / f64::from(n as u32 * width),
            &format!("sold out: last win {:.2} s", f64::from(at) / 1000.0),
            colour(0),
        );
    }
    f.frame();
    f.legend(&[
        ("#1565c0", format!("responses / s (bucket {width} ms)")),
        (colour(0), "wins / s".to_string()),
    ]);
    html.push_str(&f.svg);

    // 2. Latency percentile curve, log x in "nines".
    let mut f = Figure::new("percentiles", "Latency by percentile");
    let top_ms = max.max(0.001);
    f.y_axis(top_ms, "latency (ms)");
    // x: -log10(1 - p), from p = 0 to p = 0.9999.
    let nines = 4.0;
    let xp = |p: f64| (-(1.0 - p).log10() / nines).clamp(0.0, 1.0);
    for (p, name) in [
        (0.0, "0"),
        (0.5, "p50"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ] {
        let _ = write!(
            f.svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" class="tick">{name}</text>"#,
            Figure::px(xp(p)),
            H - BOTTOM + 16.0
        );
    }
    f.x_unit("percentile (log scale of the tail)");
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let p = 1.0 - 10f64.powf(-nines * f64::from(i) / 400.0);
            (xp(p), ms(quantile(&latencies, p.max(1e-9))) / top_ms)
        })
        .collect();
    f.polyline(&points, "#1565c0");
    f.frame();
    f.legend(&[(
        "#1565c0",
        format!("p50 {p50:.3} · p90 {p90:.3} · p99 {p99:.3} · p99.9 {p999:.3} · max {max:.3} ms"),
    )]);
    html.push_str(&f.svg);

    // 3. Histogram, log-spaced buckets (4 per decade) from 10 µs.
    let mut f = Figure::new("histogram", "Latency histogram");
    let edges: Vec<f64> = (0..=28)
        .map(|i| 10.0 * 10f64.powf(f64::from(i) / 4.0))
        .collect();
    let mut counts = vec![0u32; edges.len() - 1];
    for &us in &latencies {
        let i = edges
            .windows(2)
            .position(|w| f64::from(us) < w[1])
            .unwrap_or(counts.len() - 1);
        counts[i] += 1;
    }
    let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0).max(first);
    let shown = &counts[first..=last];
    let tallest = shown.iter().copied().max().unwrap_or(0).max(1) as f64;
    f.y_axis(tallest, "answers");
    let bw = 1.0 / shown.len() as f64;
    for (i, &c) in shown.iter().enumerate() {
        let h = f64::from(c) / tallest;
        let _ = write!(
            f.svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#90caf9"><title>{} to {} ms: {c}</title></rect>"##,
            Figure::px(i as f64 * bw) + 1.0,
            Figure::py(h),
            bw * (W - LEFT - RIGHT) - 2.0,
            h * (H - TOP - BOTTOM),
            num(edges[first + i] / 1000.0),
            num(edges[first + i + 1] / 1000.0)
        );
    }
    for (i, edge) in edges[first..=last + 1].iter().enumerate().step_by(2) {
        let _ = write!(
            f.svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" class="tick">{}</text>"#,
            Figure::px(i as f64 * bw),
            H - BOTTOM + 16.0,
            num(edge / 1000.0)
        );
    }
    f.x_unit("latency (ms, log scale)");
    let lo = edges[first].log10();
    let hi = edges[last + 1].log10();
    for (v, name, c) in [
        (p50, "p50", "#2e7d32"),
        (p90, "p90", "#f9a825"),
        (p99, "p99", "#e65100"),
        (p999, "p99.9", "#c62828"),
    ] {
        let us = (v * 1000.0).max(1.0);
        let x = ((us.log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
        let px = Figure::px(x);
        let _ = write!(
            f.svg,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="{c}" stroke-dasharray="4 3"><title>{name}</title></line>"#,
            H - BOTTOM
        );
    }
    f.frame();
    f.legend(&[
        ("#2e7d32", format!("p50 {p50:.3} ms")),
        ("#f9a825", format!("p90 {p90:.3} ms")),
        ("#e65100", format!("p99 {p99:.3} ms")),
        ("#c62828", format!("p99.9 {p999:.3} ms")),
    ]);
    html.push_str(&f.svg);

    // 4. Codes over time, stacked bars.
    let mut f = Figure::new("codes", "Answers by code over time");
    f.y_axis(peak, "per second");
    f.x_seconds(span_s);
    let bar = (W - LEFT - RIGHT) / n as f64;
    for b in 0..n {
        let mut base = 0.0;
        for (code, counts) in &by_code {
            let v = f64::from(counts[b]) * per_s / peak;
            if v > 0.0 {
                let _ = write!(
                    f.svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.2}" height="{:.1}" fill="{}"/>"#,
                    Figure::px(b as f64 / n as f64),
                    Figure::py(base + v),
                    bar.max(0.5),
                    v * (H - TOP - BOTTOM),
                    colour(*code)
                );
                base += v;
            }
        }
    }
    f.frame();
    let items: Vec<(&str, String)> = codes
        .iter()
        .map(|(c, k)| (colour(*c), format!("{} ({k})", label(*c))))
        .collect();
    f.legend(&items);
    html.push_str(&f.svg);
    html.push_str("</body></html>\n");
    html
}

/// HTML-escapes text for an element's content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> (RunInfo, Vec<Sample>) {
        let samples: Vec<Sample> = (0..5000u32)
            .map(|i| Sample {
                at_ms: i / 2,
                latency_us: 200 + (i * 37) % 5000,
                code: match i {
                    _ if i % 97 == 0 => ERROR,
                    _ if i < 100 => 0,
                    _ if i % 13 == 0 => 1004,
                    _ => 1001,
                },
            })
            .collect();
        let info = RunInfo {
            title: "http://127.0.0.1:1 <e1/g1>".into(),
            elapsed: Duration::from_millis(2500),
            stock_before: Some(100),
        };
        (info, samples)
    }

    #[test]
    fn the_page_has_its_four_figures_and_fetches_nothing() {
        let (info, samples) = run();
        let page = render(&info, &samples);
        for title in [
            "Requests and wins per second",
            "Latency by percentile",
            "Latency histogram",
            "Answers by code over time",
        ] {
            assert!(
                page.contains(&format!("<figcaption>{title}</figcaption>")),
                "{title}"
            );
        }
        assert!(page.contains("&lt;e1/g1&gt;"), "the title is escaped");
        assert!(!page.contains("<script"), "no script");
        for fetch in ["src=", "href=", "url(", "@import"] {
            assert!(!page.contains(fetch), "{fetch}: nothing is fetched");
        }
        assert!(page.contains("within the stock"));
        assert!(page.contains("sold out: last win"));
        assert_eq!(page.matches("<svg").count(), 4);
        assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
    }

    #[test]
    fn an_empty_run_still_renders() {
        let info = RunInfo {
            title: "nothing".into(),
            elapsed: Duration::ZERO,
            stock_before: None,
        };
        let page = render(&info, &[]);
        assert!(page.contains("no win"));
        assert!(!page.contains("NaN") && !page.contains("=\"inf") && !page.contains("-inf"));
    }

    #[test]
    fn buckets_are_round_and_about_120() {
        assert_eq!(bucket_ms(Duration::from_secs(1)), 50);
        assert_eq!(bucket_ms(Duration::from_secs(12)), 100);
        assert_eq!(bucket_ms(Duration::from_secs(60)), 500);
        assert_eq!(bucket_ms(Duration::from_secs(600)), 5000);
    }
}
