//! The final table of a run (`fanout`, `users`): one row per node and one for all,
//! as a Markdown table whose columns line up, so that it reads on a terminal and
//! pastes into docs/BENCHMARKS.md.

use crate::report::say;
use crate::stats::Percentiles;

/// Rows of text cells under a header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra ones dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The Markdown text, columns padded to their widest cell; numbers (cells that
    /// start with a digit) right-aligned.
    pub fn render(&self) -> String {
        let width = |k: usize| {
            std::iter::once(&self.header[k])
                .chain(self.rows.iter().map(|r| &r[k]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let numeric = |k: usize| {
            !self.rows.is_empty()
                && self
                    .rows
                    .iter()
                    .all(|r| r[k].starts_with(|c: char| c.is_ascii_digit()))
        };
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(k, (c, w))| {
                    if numeric(k) {
                        format!("{c:>w$}")
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(&self.header);
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(k, w)| {
                // The cell with its padding; a colon on the right aligns it right.
                if numeric(k) {
                    format!("{}:", "-".repeat(w + 1))
                } else {
                    "-".repeat(w + 2)
                }
            })
            .collect();
        out.push_str(&format!("|{}|\n", rule.join("|")));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// Milliseconds with 1 decimal (3 under 10 ms), from µs.
pub fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.1}")
    }
}

/// The latency columns of [`run_table`]: p50, p90, p99, max (ms).
pub fn latency_cells(p: &Percentiles) -> [String; 4] {
    [ms(p.p50), ms(p.p90), ms(p.p99), ms(p.max)]
}

/// A share of `part` in `whole` as a percentage with 3 decimals ("-" when empty).
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.3} %", 100.0 * part as f64 / whole as f64)
    }
}

/// One row of a run's final table.
#[derive(Debug, Clone, Default)]
pub struct RunRow {
    /// What the row is about: `all`, or a node's address.
    pub what: String,
    /// Connections subscribed.
    pub subscribed: usize,
    /// Publications per second achieved.
    pub publish_per_s: f64,
    /// Deliveries and the deliveries expected.
    pub delivered: u64,
    /// Deliveries expected.
    pub expected: u64,
    /// Deliveries per second.
    pub delivered_per_s: f64,
    /// Latency.
    pub latency: Percentiles,
    /// Server CPU, % of one core, when measured.
    pub server_cpu: Option<f64>,
}

/// The final table of `fanout` and `users`.
pub fn run_table(rows: &[RunRow]) -> Table {
    let mut t = Table::new(&[
        "",
        "subscribed",
        "publications/s",
        "delivered/expected",
        "lost",
        "deliveries/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "server CPU",
    ]);
    for r in rows {
        let [p50, p90, p99, max] = latency_cells(&r.latency);
        t.row(vec![
            r.what.clone(),
            r.subscribed.to_string(),
            format!("{:.0}", r.publish_per_s),
            format!("{}/{}", r.delivered, r.expected),
            percent(r.expected.saturating_sub(r.delivered), r.expected),
            format!("{:.0}", r.delivered_per_s),
            p50,
            p90,
            p99,
            max,
            r.server_cpu
                .map_or_else(|| "-".into(), |c| format!("{c:.0} %")),
        ]);
    }
    t
}

/// Ends a `fanout` or `users` run for a person: prints the final table (the per-node
/// `rows`, left out when there is one node, then `all`) and writes the latency plot when
/// `plot` asks for one.
pub fn finish(
    mut rows: Vec<RunRow>,
    all: RunRow,
    single_node: bool,
    plot: Option<(&std::path::Path, &str, &[crate::timeline::Point])>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if single_node {
        rows.clear();
    }
    rows.push(all);
    say!("");
    for line in run_table(&rows).render().lines() {
        say!("{line}");
    }
    if let Some((path, title, points)) = plot {
        crate::plot::write(path, title, points)
            .with_context(|| format!("writing {}", path.display()))?;
        say!("plot: {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["name", "n"]);
        t.row(vec!["a".into(), "5".into()]);
        t.row(vec!["longer".into(), "1234".into(), "dropped".into()]);
        t.row(vec!["short".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "| name   | n    |");
        assert_eq!(lines[1], "|--------|------|");
        assert_eq!(lines[2], "| a      | 5    |");
        assert_eq!(lines[3], "| longer | 1234 |");
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count())
        );
    }

    #[test]
    fn numbers_are_right_aligned() {
        let mut t = Table::new(&["what", "count"]);
        t.row(vec!["x".into(), "5".into()]);
        t.row(vec!["y".into(), "1234".into()]);
        let text = t.render();
        assert!(text.contains("|     5 |"), "{text}");
        assert!(text.contains("|------|------:|"), "{text}");
    }

    #[test]
    fn run_rows() {
        let row = RunRow {
            what: "all".into(),
            subscribed: 200,
            publish_per_s: 199.6,
            delivered: 999,
            expected: 1000,
            delivered_per_s: 402.2,
            latency: Percentiles {
                count: 999,
                p50: 1_500,
                p90: 12_340,
                p99: 45_000,
                p999: 0,
                max: 120_000,
            },
            server_cpu: Some(37.4),
        };
        let text = run_table(&[
            row.clone(),
            RunRow {
                server_cpu: None,
                ..row
            },
        ])
        .render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let cells: Vec<&str> = lines[2].split('|').map(str::trim).collect();
        assert_eq!(
            cells[1..12],
            [
                "all", "200", "200", "999/1000", "0.100 %", "402", "1.500", "12.3", "45.0",
                "120.0", "37 %"
            ]
        );
        assert_eq!(lines[3].split('|').map(str::trim).nth(11), Some("-"));
        assert_eq!(percent(0, 0), "-");
        assert_eq!(ms(9_999), "9.999");
    }
}
