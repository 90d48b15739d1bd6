//! `starling capacity`: the machines a workload needs, from figures measured by the load
//! tool (`starling-bench`) and documented in docs/BENCHMARKS.md.
//!
//! The model is explicit and small so that measurements can correct it: each resource
//! is one named formula (see [`load`] and [`plan`]) over named coefficients
//! ([`figures::Id`]), and every coefficient carries its source. A later validation
//! against measured clusters fixes coefficients with `--from-bench` or `--figure`, not
//! code.
//!
//! ```
//! use starling_capacity::{Workload, figures::Figures, report};
//!
//! let report = report(&Workload::new(10_000.0, 1.0, 1024.0, 1.0), &Figures::default())?;
//! assert_eq!(report.load.publications_per_s, 10_000.0);
//! assert_eq!(report.plan.nodes, 1);
//! # Ok::<(), starling_capacity::CapacityError>(())
//! ```

pub mod bench_input;
pub mod figures;
pub mod growth;
pub mod load;
pub mod plan;
pub mod plot;
pub mod predict;
pub mod render;
pub mod workload;

use serde::{Deserialize, Serialize};

pub use figures::Figures;
pub use growth::GrowthRow;
pub use load::Load;
pub use plan::Plan;
pub use predict::Prediction;
pub use workload::Workload;

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// An input or figure outside what the model can use.
    #[error("{what} must be {rule}, got {value}")]
    Invalid {
        what: String,
        rule: &'static str,
        value: String,
    },
    /// `--figure` names no coefficient.
    #[error("unknown figure `{0}`; the figures are: {1}")]
    UnknownFigure(String, String),
    /// `--figure` is not `NAME=VALUE` with a number.
    #[error("--figure wants NAME=VALUE with a number, e.g. node_cores=16; got `{0}`")]
    FigureSyntax(String),
    /// The channel mix is not usable.
    #[error("channel mix: {0}")]
    Mix(String),
    /// A file could not be read.
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// A results file is not what the load tool writes.
    #[error("{origin}: {detail}")]
    BenchInput { origin: String, detail: String },
}

/// The text of the file at `path`.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, CapacityError> {
    std::fs::read_to_string(path).map_err(|error| CapacityError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// Everything `starling capacity` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub workload: Workload,
    pub figures: Figures,
    pub load: Load,
    pub plan: Plan,
    pub growth: Vec<GrowthRow>,
    /// What the inputs said (results files read, figures taken or ignored).
    pub inputs: Vec<String>,
    /// The model's figures for a topology given with `--nodes`/`--shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Prediction>,
}

/// The load, the plan and the growth table of `w` under `f`.
pub fn report(w: &Workload, f: &Figures) -> Result<Report, CapacityError> {
    w.validate()?;
    let load = Load::of(w, f);
    let plan = plan::plan(&load, w, f)?;
    let growth = growth::growth(w, f, &growth::SCALES)?;
    Ok(Report {
        workload: w.clone(),
        figures: f.clone(),
        load,
        plan,
        growth,
        inputs: Vec::new(),
        topology: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Numbers equal within float printing, everything else exactly.
    fn same(a: &Value, b: &Value, at: &str) {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                assert!(
                    (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                    "{at}: {x} != {y}"
                );
            }
            (Value::Array(x), Value::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{at}");
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    same(x, y, &format!("{at}[{i}]"));
                }
            }
            (Value::Object(x), Value::Object(y)) => {
                assert_eq!(x.len(), y.len(), "{at}");
                for (k, v) in x {
                    same(v, &y[k], &format!("{at}.{k}"));
                }
            }
            _ => assert_eq!(a, b, "{at}"),
        }
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let mut w = Workload::new(250_000.0, 0.2, 300.0, 20.0);
        w.history = 50.0;
        w.archive_days = 3.0;
        w.presence = true;
        w.compression = workload::Compression::Deflate { ratio: Some(0.5) };
        let mut r = report(&w, &Figures::default()).expect("report");
        r.inputs.push("a note".into());
        let text = serde_json::to_string(&r).expect("json");
        let back: Report = serde_json::from_str(&text).expect("parse");
        let again = serde_json::to_value(&back).expect("json");
        same(&serde_json::to_value(&r).expect("json"), &again, "report");
        assert_eq!(back.plan.nodes, r.plan.nodes);
        assert_eq!(back.workload.compression, r.workload.compression);
    }

    #[test]
    fn a_bad_workload_is_an_error_not_a_plan() {
        let e = report(
            &Workload::new(10.0, f64::NAN, 10.0, 1.0),
            &Figures::default(),
        )
        .expect_err("NaN");
        assert!(matches!(e, CapacityError::Invalid { .. }));
        assert!(e.to_string().starts_with("--msg-rate must be"), "{e}");
    }
}
