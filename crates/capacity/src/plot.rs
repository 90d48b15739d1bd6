//! An SVG of the predicted cost against users, both axes logarithmic: Starling nodes,
//! Redis shards, balancers and the bandwidth out (Gbit/s). Hand-written SVG.

use std::fmt::Write as _;

use crate::growth::GrowthRow;
use crate::render::short;

const W: f64 = 820.0;
const H: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// One line of the plot.
struct Series {
    name: &'static str,
    color: &'static str,
    value: fn(&GrowthRow) -> f64,
}

const SERIES: [Series; 4] = [
    Series {
        name: "Starling nodes",
        color: "#1f77b4",
        value: |r| r.nodes as f64,
    },
    Series {
        name: "Redis shards",
        color: "#d62728",
        value: |r| r.shards as f64,
    },
    Series {
        name: "balancers",
        color: "#2ca02c",
        value: |r| r.balancers as f64,
    },
    Series {
        name: "out, Gbit/s",
        color: "#9467bd",
        value: |r| r.bytes_out_per_s * 8.0 / 1e9,
    },
];

/// The plot of `rows` (ascending users) with `title`.
pub fn svg(rows: &[GrowthRow], title: &str) -> String {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let users: Vec<f64> = rows
        .iter()
        .map(|r| r.users)
        .filter(|u| positive(*u))
        .collect();
    let values: Vec<f64> = SERIES
        .iter()
        .flat_map(|s| rows.iter().map(s.value))
        .filter(|v| positive(*v))
        .collect();
    let decade_range = |xs: &[f64]| -> (f64, f64) {
        let lo = xs.iter().copied().fold(f64::MAX, f64::min);
        let hi = xs.iter().copied().fold(f64::MIN, f64::max);
        if lo > hi {
            return (0.0, 1.0);
        }
        let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
        (lo, if hi > lo { hi } else { lo + 1.0 })
    };
    let (x0, x1) = decade_range(&users);
    let (y0, y1) = decade_range(&values);
    let px = |u: f64| LEFT + (u.log10() - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |v: f64| H - BOTTOM - (v.log10() - y0) / (y1 - y0) * (H - TOP - BOTTOM);

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        (W - RIGHT + LEFT) / 2.0,
        escape(title)
    );
    // Grid and axes: one line per decade.
    for d in (x0 as i64)..=(x1 as i64) {
        let x = px(10f64.powi(d as i32));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0,
            short(10f64.powi(d as i32))
        );
    }
    for d in (y0 as i64)..=(y1 as i64) {
        let y = py(10f64.powi(d as i32));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            axis_label(d)
        );
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">users (log scale)</text>"#,
        (W - RIGHT + LEFT) / 2.0,
        H - 16.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">machines, or Gbit/s (log scale)</text>"#,
        (H - BOTTOM + TOP) / 2.0
    );
    // The series and the legend.
    for (k, s) in SERIES.iter().enumerate() {
        let points: Vec<String> = rows
            .iter()
            .filter(|r| positive(r.users) && positive((s.value)(r)))
            .map(|r| format!("{:.1},{:.1}", px(r.users), py((s.value)(r))))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                s.color,
                points.join(" ")
            );
        }
        let y = TOP + 10.0 + 22.0 * k as f64;
        let x = W - RIGHT + 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            s.color,
            x + 30.0,
            y + 4.0,
            s.name
        );
    }
    out.push_str("</svg>\n");
    out
}

fn axis_label(decade: i64) -> String {
    if decade >= 0 {
        short(10f64.powi(decade as i32))
    } else {
        format!("{}", 10f64.powi(decade as i32))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::Figures;
    use crate::growth::{growth, plot_scales};
    use crate::workload::Workload;

    #[test]
    fn the_plot_is_an_svg_with_every_series() {
        let w = Workload::new(100.0, 1.0, 1024.0, 1.0);
        let rows = growth(&w, &Figures::default(), &plot_scales()).expect("rows");
        assert_eq!(rows.len(), 25);
        let svg = svg(&rows, "10,000 users <test> & more");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;test&gt; &amp; more"));
        for s in SERIES {
            assert!(svg.contains(s.name), "{}", s.name);
        }
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(
            svg.contains(">100M<"),
            "the x axis reaches 100 million users"
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn an_empty_plot_is_still_an_svg() {
        let svg = svg(&[], "nothing");
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
        assert!(!svg.contains("NaN"));
    }
}
