//! `plot`: a comparison's latency distributions as SVG.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use herald_loadtest::plot;
use herald_loadtest::report::Report;

/// A latency-distribution chart (SVG) of every run in a comparison's
/// JSON (baselines in one colour, herald in another).
#[derive(Args)]
pub struct PlotArgs {
    /// The comparison's `--json` output.
    #[arg(long)]
    pub json: PathBuf,
    #[arg(long)]
    pub svg: PathBuf,
    #[arg(long)]
    pub title: String,
}

/// `plot`.
pub async fn plot(args: PlotArgs) -> anyhow::Result<()> {
    let PlotArgs { json, svg, title } = args;
    #[derive(serde::Deserialize)]
    struct Runs {
        reports: Vec<Report>,
    }
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
    let runs: Runs = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a comparison's JSON", json.display()))?;
    std::fs::write(&svg, plot::latency_chart(&title, &runs.reports))
        .with_context(|| format!("writing {}", svg.display()))?;
    println!("wrote {}", svg.display());
    Ok(())
}
