//! The plot of a run (or of an A/B pair): load, replicas and p95 latency over time.

use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::engine::Run;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing {path}: {what}")]
    Draw { path: String, what: String },
}

const COLORS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[(&str, &Run)],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| err.to_string();
    root.fill(&WHITE).map_err(e)?;
    let t_max = runs
        .iter()
        .filter_map(|(_, r)| r.timeline.last().map(|p| p.t))
        .fold(1.0, f64::max);
    let panels = root.split_evenly((3, 1));
    let load_max = runs
        .iter()
        .flat_map(|(_, r)| {
            r.timeline
                .iter()
                .map(|p| p.load_rps.max(p.served as f64 / 15.0))
        })
        .fold(1.0, f64::max)
        * 1.1;
    let repl_max = runs
        .iter()
        .flat_map(|(_, r)| r.timeline.iter().map(|p| p.replicas.max(p.desired) as f64))
        .fold(1.0, f64::max)
        + 1.0;
    let slo = runs
        .first()
        .map_or(super::engine::SLO_P95_S, |(_, r)| r.summary.slo_p95_s);
    let p95_max = runs
        .iter()
        .flat_map(|(_, r)| r.timeline.iter().filter_map(|p| p.p95_s))
        .fold(slo, f64::max)
        * 1.1;

    // Load: offered, served and refused (429, 504, 503) per second.
    let mut chart = panel(&panels[0], "load (requests/s)", t_max, load_max).map_err(e)?;
    if let Some((_, first)) = runs.first() {
        chart
            .draw_series(LineSeries::new(
                stepped(first.timeline.iter().map(|p| (p.t, p.load_rps))),
                BLACK.stroke_width(2),
            ))
            .map_err(e)?
            .label("offered")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    }
    for (i, (name, run)) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                run.timeline.iter().map(|p| (p.t, p.served as f64 / 15.0)),
                c.stroke_width(1),
            ))
            .map_err(e)?
            .label(format!("served ({name})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
        chart
            .draw_series(LineSeries::new(
                run.timeline.iter().map(|p| (p.t, p.rejected as f64 / 15.0)),
                c.mix(0.4).stroke_width(1),
            ))
            .map_err(e)?
            .label(format!("refused ({name})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.mix(0.4)));
    }
    legend(&mut chart).map_err(e)?;

    // Replicas: spec and ready.
    let mut chart = panel(&panels[1], "replicas", t_max, repl_max).map_err(e)?;
    for (i, (name, run)) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                stepped(run.timeline.iter().map(|p| (p.t, p.replicas as f64))),
                c.stroke_width(2),
            ))
            .map_err(e)?
            .label(format!("replicas ({name})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
        chart
            .draw_series(LineSeries::new(
                stepped(run.timeline.iter().map(|p| (p.t, p.ready as f64))),
                c.mix(0.4).stroke_width(1),
            ))
            .map_err(e)?
            .label(format!("ready ({name})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.mix(0.4)));
    }
    legend(&mut chart).map_err(e)?;

    // Latency: p95 per 15 s and the objective.
    let mut chart = panel(&panels[2], "p95 request time (s)", t_max, p95_max).map_err(e)?;
    chart
        .draw_series(LineSeries::new([(0.0, slo), (t_max, slo)], BLACK.mix(0.5)))
        .map_err(e)?
        .label(format!("{slo} s target"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
    for (i, (name, run)) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                run.timeline
                    .iter()
                    .filter_map(|p| p.p95_s.map(|v| (p.t, v))),
                c.stroke_width(2),
            ))
            .map_err(e)?
            .label(format!("p95 ({name})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
    }
    legend(&mut chart).map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel: time on x (seconds), `caption` on y from 0 to `y_max`, with its grid drawn.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    t_max: f64,
    y_max: f64,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("seconds").draw()?;
    Ok(chart)
}

/// The legend box of a panel.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

fn stepped(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (t, v) in points {
        if let Some(&(_, prev)) = out.last() {
            out.push((t, prev));
        }
        out.push((t, v));
    }
    out
}

const SIZE: (u32, u32) = (1200, 900);

/// Writes `plot.png` in `dir`, or `plot.svg` when text cannot be rendered to a bitmap (no
/// usable fonts). Returns the path written.
pub fn write_plot(dir: &Path, runs: &[(&str, &Run)]) -> Result<PathBuf, PlotError> {
    crate::plotting::ensure_fonts();
    let png = dir.join("plot.png");
    if draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), runs).is_ok() {
        return Ok(png);
    }
    let _ = std::fs::remove_file(&png);
    let svg = dir.join("plot.svg");
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), runs).map_err(|what| {
        PlotError::Draw {
            path: svg.display().to_string(),
            what,
        }
    })?;
    Ok(svg)
}
