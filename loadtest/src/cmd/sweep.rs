//! `sweep`: deliveries and p99 against offered load, herald and a baseline.

use std::path::PathBuf;

use clap::Args;
use herald_loadtest::gen::{self, GenConfig};
use herald_loadtest::plot;

use super::{gen_cfg, judge, median, ratio, summarize, Load};

/// Throughput and p99 against offered load: the same fan-out at each
/// `--rates` value against a baseline and herald (their order alternating
/// from point to point), every run judged strictly; writes the JSON and
/// two SVG charts, and exits 1 afterwards if any run failed its verdict.
/// A baseline that acks fewer than the minimum but delivers all it acked
/// once, in order, is noted as saturated at that point, not failed.
#[derive(Args)]
pub struct SweepArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    #[arg(long)]
    pub base_url: String,
    /// The baseline's protocol: herald (the WebSocket floor), socketio
    /// or centrifugo.
    #[arg(long, default_value = "herald")]
    pub base_proto: String,
    #[arg(long, default_value = "ws-floor")]
    pub base_label: String,
    /// Publishes per second over all publishers, one point each.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,200,400")]
    pub rates: Vec<u32>,
    /// Writes PREFIX-throughput.svg and PREFIX-p99.svg.
    #[arg(long)]
    pub svg_prefix: PathBuf,
    /// (`--pairs`: baseline/herald pairs per point, the order
    /// alternating; the charts show each side's median.)
    #[command(flatten)]
    pub load: Load,
}

/// `sweep`.
pub async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let SweepArgs {
        url,
        base_url,
        base_proto,
        base_label,
        rates,
        svg_prefix,
        load,
    } = args;
    let proto = gen::Proto::parse(&base_proto)?;
    run_sweep(
        &url,
        &base_url,
        proto,
        &base_label,
        &rates,
        &svg_prefix,
        load.pairs.max(1),
        &load,
    )
    .await?;
    Ok(())
}

/// The `sweep` command (see its help).
#[allow(clippy::too_many_arguments)]
async fn run_sweep(
    url: &str,
    base_url: &str,
    proto: gen::Proto,
    label: &str,
    rates: &[u32],
    svg_prefix: &std::path::Path,
    pairs: usize,
    load: &Load,
) -> anyhow::Result<()> {
    let mut points = Vec::new();
    let mut failed = Vec::new();
    let mut saturated = Vec::new();
    let (mut base_line, mut herald_line) = (Vec::new(), Vec::new());
    let (mut base_p99, mut herald_p99) = (Vec::new(), Vec::new());
    let mut turn = 0usize;
    for &rate in rates {
        let at = Load {
            rate,
            ..load.clone()
        };
        let offered = rate as f64 * at.subscribers as f64 / at.channels.max(1) as f64;
        println!("== offered {offered} deliveries/s ({rate} publishes/s), {pairs} pair(s)");
        let run_base = || async {
            let mut r = gen::run(GenConfig {
                proto,
                ..gen_cfg(base_url, &at)?
            })
            .await?;
            r.target = label.to_owned();
            anyhow::Ok(r)
        };
        let (mut bs, mut hs) = (Vec::new(), Vec::new());
        for _ in 0..pairs {
            // A B, then B A: neither side always runs first.
            let (b, h) = if turn.is_multiple_of(2) {
                let b = run_base().await?;
                (b, gen::run(gen_cfg(url, &at)?).await?)
            } else {
                let h = gen::run(gen_cfg(url, &at)?).await?;
                (run_base().await?, h)
            };
            turn += 1;
            for r in [&b, &h] {
                r.print();
                println!();
            }
            // Past its saturation the baseline acks fewer than a run that
            // keeps up would; that is the curve's point, so it is noted,
            // not failed, while loss, duplicates and disorder still fail.
            // herald is held to the full verdict at every point.
            match at.strict().judge_saturated(&b.target, b.counts()) {
                Ok(None) => {}
                Ok(Some(note)) => {
                    println!("{note} at {rate}/s");
                    saturated.push(format!("{note} at {rate}/s"));
                }
                Err(e) => failed.push(format!("{} at {rate}/s: {e}", b.target)),
            }
            if let Err(e) = judge(&h, &at) {
                failed.push(format!("{} at {rate}/s: {e}", h.target));
            }
            bs.push(b);
            hs.push(h);
        }
        let del: Vec<f64> = bs
            .iter()
            .zip(&hs)
            .map(|(b, h)| ratio(h.deliveries_per_sec, b.deliveries_per_sec))
            .collect();
        let p99: Vec<f64> = bs
            .iter()
            .zip(&hs)
            .map(|(b, h)| ratio(h.latency.p99_ms, b.latency.p99_ms))
            .collect();
        let ratios = serde_json::json!({
            "deliveries_per_sec": summarize(&del),
            "p99": summarize(&p99),
        });
        println!("herald / {label} at {offered} offered: {ratios}");
        base_line.push((offered, median(bs.iter().map(|r| r.deliveries_per_sec))));
        herald_line.push((offered, median(hs.iter().map(|r| r.deliveries_per_sec))));
        base_p99.push((offered, median(bs.iter().map(|r| r.latency.p99_ms))));
        herald_p99.push((offered, median(hs.iter().map(|r| r.latency.p99_ms))));
        points.push(serde_json::json!({
            "rate": rate,
            "offered": offered,
            "base": bs,
            "herald": hs,
            "ratios": ratios,
        }));
    }
    if let Some(p) = &load.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(
                &serde_json::json!({ "points": points, "failed": failed, "saturated": saturated }),
            )?,
        )?;
    }
    let shape = format!(
        "{} subscribers, {} channel(s), {} B",
        load.subscribers, load.channels, load.size
    );
    let line = |name: &str, color, dashed, points: &Vec<(f64, f64)>| plot::Series {
        label: name.to_owned(),
        color,
        dashed,
        points: points.clone(),
    };
    let offered: Vec<(f64, f64)> = base_line.iter().map(|&(x, _)| (x, x)).collect();
    let chart = |title: String, y: &str, log| plot::Chart {
        title,
        x_label: "offered deliveries/s".into(),
        y_label: y.into(),
        y_log: log,
        x_ticks: Vec::new(),
    };
    let with_suffix = |s: &str| {
        let mut p = svg_prefix.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    };
    std::fs::write(
        with_suffix("-throughput.svg"),
        plot::svg(
            &chart(
                format!("Delivered vs offered: {shape}"),
                "deliveries/s",
                false,
            ),
            &[
                line("offered", "#999", true, &offered),
                line(label, plot::BASELINE, false, &base_line),
                line("herald", plot::HERALD, false, &herald_line),
            ],
        ),
    )?;
    std::fs::write(
        with_suffix("-p99.svg"),
        plot::svg(
            &chart(
                format!("p99 latency vs offered: {shape}"),
                "p99 latency, ms (log)",
                true,
            ),
            &[
                line(label, plot::BASELINE, false, &base_p99),
                line("herald", plot::HERALD, false, &herald_p99),
            ],
        ),
    )?;
    if !failed.is_empty() {
        anyhow::bail!("strict verifier: {}", failed.join("; "));
    }
    Ok(())
}
