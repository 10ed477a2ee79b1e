//! The latency plot of a run (`loadtest --plot FILE`): latency by percentile,
//! as HdrHistogram draws it. The x axis is logarithmic in 1/(1 − q), so the
//! tail (99 %, 99.9 %, 99.99 %) gets as much room as the median. Plain SVG, no
//! dependency: it shows in a browser and in `docs/performance.md`.

use std::fmt::Write;

use super::report::Latency;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// The tail the x axis reaches: 99.99 %.
const MAX_NINES: f64 = 4.0;

/// x of quantile `q`: how many nines it has (0 for 0, 2 for 0.99).
fn nines(q: f64) -> f64 {
    (1.0 / (1.0 - q).max(10f64.powf(-MAX_NINES))).log10()
}

/// A round step for about `n` ticks up to `max`.
fn tick_step(max: f64, n: f64) -> f64 {
    let raw = max / n;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The plot of `latency`'s percentile curve, titled `title`.
pub fn latency_svg(title: &str, latency: &Latency) -> String {
    let points = &latency.percentiles;
    let max_ms = points
        .iter()
        .map(|(_, us)| *us as f64 / 1000.0)
        .fold(0.0, f64::max)
        .max(0.001);
    let step = tick_step(max_ms, 5.0);
    let top_ms = (max_ms / step).ceil() * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |q: f64| LEFT + nines(q) / MAX_NINES * plot_w;
    let y = |ms: f64| TOP + plot_h - ms / top_ms * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Horizontal grid and latency ticks.
    let mut ms = 0.0;
    while ms <= top_ms + step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e6ea"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(ms) + 4.0,
            format_ms(ms),
            y = y(ms),
        );
        ms += step;
    }
    // Percentile ticks.
    for (q, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#e3e6ea"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            x = x(q),
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let line: Vec<String> = points
        .iter()
        .map(|(q, us)| format!("{:.1},{:.1}", x(*q), y(*us as f64 / 1000.0)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f5fa8" stroke-width="2" points="{}"/>"##,
        line.join(" ")
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="start">p50 {} · p99 {} · p99.9 {} · max {} · {} samples</text>"#,
        LEFT + 8.0,
        TOP + 14.0,
        format_ms(latency.p50_us as f64 / 1000.0),
        format_ms(latency.p99_us as f64 / 1000.0),
        format_ms(latency.p999_us as f64 / 1000.0),
        format_ms(latency.max_us as f64 / 1000.0),
        latency.count
    );
    s.push_str("</svg>\n");
    s
}

fn format_ms(ms: f64) -> String {
    if ms >= 100.0 || ms == 0.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::{histogram, record};

    #[test]
    fn the_plot_draws_every_percentile_left_to_right_with_the_tail_higher() {
        let mut h = histogram();
        for i in 1..=10_000u64 {
            record(&mut h, std::time::Duration::from_micros(i));
        }
        let latency = Latency::of(&h);
        let svg = latency_svg("enqueue <1 KiB>", &latency);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("enqueue &lt;1 KiB&gt;"), "titles are escaped");
        let points: Vec<(f64, f64)> = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(points.len(), latency.percentiles.len());
        for w in points.windows(2) {
            assert!(w[1].0 > w[0].0, "x grows: {w:?}");
            assert!(
                w[1].1 <= w[0].1,
                "latency never falls along the curve: {w:?}"
            );
        }
        for (x, y) in &points {
            assert!((LEFT..=WIDTH - RIGHT).contains(x) && (TOP..=HEIGHT - BOTTOM).contains(y));
        }
    }
}
