//! Latency over time as an SVG file (`--plot FILE.svg`): p50 and p99 per second in
//! the upper panel (ms), deliveries per second in the lower one, over the seconds of
//! the run. Hand-written SVG: a few lines, text labels and polylines.

use std::fmt::Write;

use crate::timeline::Point;

/// Picture size, px.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 560.0;
/// Plot area's left and right edges (room for the axis labels on the left).
const LEFT: f64 = 80.0;
const RIGHT: f64 = WIDTH - 30.0;
/// The latency panel's top and bottom, then the rate panel's.
const LAT_TOP: f64 = 50.0;
const LAT_BOTTOM: f64 = 300.0;
const RATE_TOP: f64 = 350.0;
const RATE_BOTTOM: f64 = 500.0;

/// A linear map from data values to pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Data value at `px_from`.
    pub from: f64,
    /// Data value at `px_to`.
    pub to: f64,
    /// Pixel of `from`.
    pub px_from: f64,
    /// Pixel of `to`.
    pub px_to: f64,
}

impl Scale {
    /// The pixel of `v` (values outside the range are clamped to its ends).
    pub fn px(&self, v: f64) -> f64 {
        let span = self.to - self.from;
        let t = if span > 0.0 {
            ((v - self.from) / span).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.px_from + t * (self.px_to - self.px_from)
    }
}

/// Round axis ticks from 0 up to at least `max`: about 5 of them, spaced by 1, 2 or 5
/// times a power of ten. The last tick is the axis's end.
pub fn nice_ticks(max: f64) -> Vec<f64> {
    if !max.is_finite() || max <= 0.0 {
        return vec![0.0, 1.0];
    }
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    let n = (max / step - 1e-9).ceil().max(1.0) as usize;
    (0..=n).map(|k| k as f64 * step).collect()
}

/// A tick label: no trailing zeros, at most 3 decimals.
fn label(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Text for inclusion in SVG (XML) content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// One line of a panel: its name (SVG class and legend), colour and `(x, y)` points.
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// One panel: its y axis ticks and grid lines, its title, and a polyline per series.
fn panel(out: &mut String, x: &Scale, (top, bottom): (f64, f64), title: &str, series: &[Series]) {
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let ticks = nice_ticks(max);
    let y = Scale {
        from: 0.0,
        to: *ticks.last().unwrap_or(&1.0),
        px_from: bottom,
        px_to: top,
    };
    let _ = writeln!(
        out,
        r#"<text class="panel" x="{LEFT}" y="{:.1}">{}</text>"#,
        top - 10.0,
        escape(title)
    );
    for t in &ticks {
        let py = y.px(*t);
        let _ = writeln!(
            out,
            r##"<line class="grid" x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            py + 4.0,
            label(*t)
        );
    }
    for (
        k,
        Series {
            name,
            color,
            points,
        },
    ) in series.iter().enumerate()
    {
        let coords: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x.px(*t), y.px(*v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline class="{name}" fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            coords.join(" ")
        );
        let lx = RIGHT - 120.0 + 60.0 * k as f64 - 60.0 * (series.len() as f64 - 1.0);
        let _ = writeln!(
            out,
            r#"<text class="legend" x="{lx:.1}" y="{:.1}" fill="{color}">{name}</text>"#,
            top - 10.0
        );
    }
}

/// The SVG picture of `points` under `title`.
pub fn svg(title: &str, points: &[Point]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text class="title" x="{:.1}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let end = points.iter().map(|p| p.at_s).fold(0.0, f64::max);
    let x_ticks = nice_ticks(end);
    let x = Scale {
        from: 0.0,
        to: *x_ticks.last().unwrap_or(&1.0),
        px_from: LEFT,
        px_to: RIGHT,
    };
    let ms = |v: u64| v as f64 / 1000.0;
    // A second without deliveries has no latency: no point, rather than a zero.
    let measured = || points.iter().filter(|p| p.latency.count > 0);
    let p50 = measured().map(|p| (p.at_s, ms(p.latency.p50))).collect();
    let p99 = measured().map(|p| (p.at_s, ms(p.latency.p99))).collect();
    let rate = points.iter().map(|p| (p.at_s, p.per_s())).collect();
    panel(
        &mut out,
        &x,
        (LAT_TOP, LAT_BOTTOM),
        "latency per second (ms)",
        &[
            Series {
                name: "p50",
                color: "#1f77b4",
                points: p50,
            },
            Series {
                name: "p99",
                color: "#d62728",
                points: p99,
            },
        ],
    );
    panel(
        &mut out,
        &x,
        (RATE_TOP, RATE_BOTTOM),
        "deliveries per second",
        &[Series {
            name: "delivered",
            color: "#2ca02c",
            points: rate,
        }],
    );
    for t in &x_ticks {
        let px = x.px(*t);
        let _ = writeln!(
            out,
            r#"<text class="tick" x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            RATE_BOTTOM + 18.0,
            label(*t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the first publication</text>"#,
        (LEFT + RIGHT) / 2.0,
        RATE_BOTTOM + 40.0
    );
    if points.is_empty() {
        let _ = writeln!(
            out,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no deliveries</text>"#,
            (LEFT + RIGHT) / 2.0,
            (LAT_TOP + LAT_BOTTOM) / 2.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Writes the plot of `points` to `path`.
pub fn write(path: &std::path::Path, title: &str, points: &[Point]) -> std::io::Result<()> {
    std::fs::write(path, svg(title, points))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn point(at_s: f64, count: u64, p50_us: u64, p99_us: u64) -> Point {
        Point {
            at_s,
            span_s: 1.0,
            latency: Percentiles {
                count,
                p50: p50_us,
                p99: p99_us,
                ..Percentiles::default()
            },
        }
    }

    /// The `(x, y)` pairs of the polyline of class `class`.
    fn polyline(svg: &str, class: &str) -> Vec<(f64, f64)> {
        let start = svg
            .find(&format!(r#"<polyline class="{class}""#))
            .unwrap_or_else(|| panic!("no {class} polyline"));
        let rest = &svg[start..];
        let pts = &rest[rest.find("points=\"").unwrap() + 8..];
        let pts = &pts[..pts.find('"').unwrap()];
        pts.split_whitespace()
            .map(|xy| {
                let (x, y) = xy.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(nice_ticks(73.0), vec![0.0, 20.0, 40.0, 60.0, 80.0]);
        assert_eq!(nice_ticks(100.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(nice_ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(4_000.0).last(), Some(&4_000.0));
        let small = nice_ticks(0.93);
        assert_eq!(small.len(), 6);
        assert!((small[5] - 1.0).abs() < 1e-9);
        assert_eq!(nice_ticks(0.0), vec![0.0, 1.0]);
        assert_eq!(nice_ticks(f64::NAN), vec![0.0, 1.0]);
        for max in [0.003, 1.0, 7.5, 12.0, 999.0, 123_456.0] {
            let t = nice_ticks(max);
            assert!(*t.last().unwrap() >= max, "{max}: {t:?}");
            assert!((3..=11).contains(&t.len()), "{max}: {t:?}");
        }
        assert_eq!(label(0.2), "0.2");
        assert_eq!(label(40.0), "40");
        assert_eq!(label(0.0), "0");
    }

    #[test]
    fn scale_maps_and_clamps() {
        let s = Scale {
            from: 0.0,
            to: 10.0,
            px_from: 300.0,
            px_to: 50.0,
        };
        assert_eq!(s.px(0.0), 300.0);
        assert_eq!(s.px(10.0), 50.0);
        assert_eq!(s.px(5.0), 175.0);
        assert_eq!(s.px(-1.0), 300.0);
        assert_eq!(s.px(20.0), 50.0);
    }

    #[test]
    fn structure_and_scaling_of_a_known_run() {
        // 4 s: p50 10..40 ms, p99 up to 80 ms (axis 0..80), 1000..4000 deliveries/s.
        let points: Vec<Point> = (1..=4)
            .map(|s| point(s as f64, 1000 * s, 10_000 * s, 20_000 * s))
            .collect();
        let svg = svg("users <10k> & co", &points);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("users &lt;10k&gt; &amp; co"));
        assert_eq!(svg.matches("<polyline ").count(), 3);
        let (p50, p99, rate) = (
            polyline(&svg, "p50"),
            polyline(&svg, "p99"),
            polyline(&svg, "delivered"),
        );
        assert_eq!((p50.len(), p99.len(), rate.len()), (4, 4, 4));
        // x: 0..4 s over the plot's width (the axis ends at the last round tick, 4).
        assert_eq!(p50[3].0, RIGHT);
        assert_eq!(p50[1].0, LEFT + (RIGHT - LEFT) / 2.0);
        // y: the highest p99 (80 ms) is the latency panel's top, 0 its bottom.
        assert_eq!(p99[3].1, LAT_TOP);
        let y_of = |ms: f64| LAT_BOTTOM - ms / 80.0 * (LAT_BOTTOM - LAT_TOP);
        assert!((p50[0].1 - y_of(10.0)).abs() < 0.06, "{:?}", p50[0]);
        assert!((p99[1].1 - y_of(40.0)).abs() < 0.06, "{:?}", p99[1]);
        // The rate panel: 4000/s on top; everything inside the panel; rising.
        assert_eq!(rate[3].1, RATE_TOP);
        assert!(rate.iter().all(|p| p.1 >= RATE_TOP && p.1 <= RATE_BOTTOM));
        assert!(rate.windows(2).all(|w| w[1].1 < w[0].1 && w[1].0 > w[0].0));
        // Tick labels of both axes.
        assert!(svg.contains(">80</text>"));
        assert!(svg.contains(">4000</text>"));
        assert!(!svg.contains("no deliveries"));
        // A second without deliveries: a zero rate, but no latency point.
        let mut gap = points.clone();
        gap.insert(2, point(2.5, 0, 0, 0));
        let svg = super::svg("gap", &gap);
        assert_eq!(polyline(&svg, "p50").len(), 4);
        assert_eq!(polyline(&svg, "delivered").len(), 5);
    }

    #[test]
    fn empty_run_is_still_a_picture() {
        let svg = svg("nothing", &[]);
        assert!(svg.contains("no deliveries"));
        assert_eq!(svg.matches("<polyline ").count(), 3);
        assert!(polyline(&svg, "p50").is_empty());
        let dir = std::env::temp_dir().join(format!("plot-test-{}.svg", std::process::id()));
        write(&dir, "t", &[]).unwrap();
        assert!(std::fs::read_to_string(&dir).unwrap().starts_with("<svg"));
        let _ = std::fs::remove_file(&dir);
    }
}
