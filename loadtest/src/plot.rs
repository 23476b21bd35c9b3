//! SVG line charts of the results: latency distributions (every run of a
//! comparison, baseline against herald) and throughput / p99 against offered
//! load (a sweep). Written by hand rather than with `plotters`: its text
//! layout needs a font backend (`ttf`: font-kit and the system's fontconfig
//! library, or `ab_glyph` with a font file shipped in the repository), while
//! an SVG can leave the glyphs to the viewer; two chart kinds are about 200
//! lines.

use std::fmt::Write;

use crate::report::Report;

/// One line.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// A chart's frame.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_log: bool,
    /// Fixed x ticks (position, text); none: computed.
    pub x_ticks: Vec<(f64, String)>,
}

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 52.0;

/// herald's colour and the baselines'.
pub const HERALD: &str = "#1f5fbf";
pub const BASELINE: &str = "#d9730d";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round numbers (1, 2, 5 × 10^k) covering `lo..hi`, about six of them.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 7.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// The chart as an SVG document.
pub fn svg(chart: &Chart, series: &[Series]) -> String {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if !x.is_finite() || !y.is_finite() || (chart.y_log && y <= 0.0) {
            continue;
        }
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 10.0);
    }
    if chart.x_ticks.is_empty() {
        // Computed ticks: a linear axis from zero.
        x0 = x0.min(0.0);
    }
    if let (Some(a), Some(b)) = (chart.x_ticks.first(), chart.x_ticks.last()) {
        x0 = x0.min(a.0);
        x1 = x1.max(b.0);
    }
    let (ly0, ly1) = if chart.y_log {
        (
            y0.log10().floor(),
            y1.log10().ceil().max(y0.log10().floor() + 1.0),
        )
    } else {
        let t = linear_ticks(0.0_f64.min(y0), y1 * 1.05);
        (0.0_f64.min(y0), *t.last().unwrap_or(&y1))
    };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0).max(1e-12) * pw;
    let sy = |y: f64| {
        let v = if chart.y_log { y.max(1e-12).log10() } else { y };
        TOP + ph - (v - ly0) / (ly1 - ly0).max(1e-12) * ph
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        LEFT,
        esc(&chart.title)
    );
    // Grid and ticks.
    let y_ticks: Vec<(f64, String)> = if chart.y_log {
        let mut v = Vec::new();
        let mut e = ly0;
        while e <= ly1 + 1e-9 {
            for m in [1.0, 2.0, 5.0] {
                let y = m * 10f64.powf(e);
                if y.log10() <= ly1 + 1e-9 {
                    v.push((y, if m == 1.0 { fmt_num(y) } else { String::new() }));
                }
            }
            e += 1.0;
        }
        v
    } else {
        linear_ticks(ly0, ly1)
            .into_iter()
            .map(|y| (y, fmt_num(y)))
            .collect()
    };
    for (y, text) in &y_ticks {
        let py = sy(*y);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        if !text.is_empty() {
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                py + 4.0,
                esc(text)
            );
        }
    }
    let x_ticks: Vec<(f64, String)> = if chart.x_ticks.is_empty() {
        linear_ticks(x0, x1)
            .into_iter()
            .map(|x| (x, fmt_num(x)))
            .collect()
    } else {
        chart.x_ticks.clone()
    };
    for (x, text) in &x_ticks {
        let px = sx(*x);
        let _ = writeln!(
            o,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="#eee"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            o,
            r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
            TOP + ph + 16.0,
            esc(text)
        );
    }
    let _ = writeln!(
        o,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 12.0,
        esc(&chart.x_label)
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(&chart.y_label)
    );
    // Lines and the legend.
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.y_log || *y > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.6"{dash}/>"#,
            path.join(" "),
            s.color
        );
        for p in &path {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                o,
                r#"<circle cx="{x}" cy="{y}" r="2.2" fill="{}"/>"#,
                s.color
            );
        }
        let ly = TOP + 8.0 + i as f64 * 18.0;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 24.0,
            s.color
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            esc(&s.label)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// Position of quantile `q` on a latency-distribution chart's x axis: the
/// "number of nines", so 90 %, 99 %, 99.9 % are evenly spaced.
pub fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-5).log10()
}

/// The latency distribution of every run in a comparison: baselines in one
/// colour, herald in another, one line per run (pairs dashed after the
/// first).
pub fn latency_chart(title: &str, reports: &[Report]) -> String {
    let mut seen: Vec<String> = Vec::new();
    let series: Vec<Series> = reports
        .iter()
        .filter(|r| !r.latency.distribution.is_empty())
        .map(|r| {
            let n = seen.iter().filter(|t| **t == r.target).count();
            seen.push(r.target.clone());
            let herald = r.target.starts_with("herald");
            Series {
                label: format!("{} #{}", r.target, n + 1),
                color: if herald { HERALD } else { BASELINE },
                dashed: n > 0,
                points: r
                    .latency
                    .distribution
                    .iter()
                    .map(|&(q, ms)| (nines(q), ms))
                    .collect(),
            }
        })
        .collect();
    let chart = Chart {
        title: title.into(),
        x_label: "percentile".into(),
        y_label: "latency, ms (log)".into(),
        y_log: true,
        x_ticks: [0.0, 0.9, 0.99, 0.999, 0.9999]
            .iter()
            .map(|&q| {
                (
                    nines(q),
                    format!("{}%", trim(q * 100.0).trim_end_matches(".0")),
                )
            })
            .collect(),
    };
    svg(&chart, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(linear_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = linear_ticks(0.0, 433_000.0);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() <= 433_000.0 && t.len() >= 4, "{t:?}");
        assert_eq!(fmt_num(250_000.0), "250k");
        assert_eq!(fmt_num(0.5), "0.5");
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_chart_has_every_series_and_escapes_text() {
        let s = svg(
            &Chart {
                title: "a < b".into(),
                y_log: true,
                ..Chart::default()
            },
            &[
                Series {
                    label: "herald #1".into(),
                    color: HERALD,
                    dashed: false,
                    points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, 50.0)],
                },
                Series {
                    label: "floor #1".into(),
                    color: BASELINE,
                    dashed: true,
                    points: vec![(0.0, 0.5), (2.0, 0.0)],
                },
            ],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("a &lt; b"));
        assert_eq!(s.matches("<polyline").count(), 2);
        // The zero cannot go on a log axis: dropped, not drawn at infinity.
        assert!(!s.contains("inf") && !s.contains("NaN"));
    }
}
