//! Plots: `bench http`'s latency distribution and throughput over time, and `bench sweep`'s
//! throughput–latency curve. PNG or SVG by the file's extension.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::http::Run;
use super::report::HttpReport;
use super::BenchError;

const ORANGE: RGBColor = RGBColor(230, 140, 0);
const FONT: &str = "sans-serif";

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

enum Kind {
    Png,
    Svg,
}

fn kind(path: &Path) -> Result<Kind, BenchError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => Ok(Kind::Png),
        Some("svg") => Ok(Kind::Svg),
        _ => Err(BenchError::Plot {
            path: path.to_path_buf(),
            reason: "use a .png or .svg file name".into(),
        }),
    }
}

/// `bench http --plot`: the latency histogram (left) and the throughput over time (right).
pub fn http_plot(path: &Path, run: &Run) -> Result<(), BenchError> {
    let latencies: Vec<f64> = run
        .samples
        .iter()
        .filter(|s| s.is_ok())
        .map(|s| s.latency().as_secs_f64() * 1e3)
        .collect();
    let size = (1280, 520);
    let result = match kind(path)? {
        Kind::Png => draw_http(
            BitMapBackend::new(path, size).into_drawing_area(),
            &run.report,
            &latencies,
        ),
        Kind::Svg => draw_http(
            SVGBackend::new(path, size).into_drawing_area(),
            &run.report,
            &latencies,
        ),
    };
    result.map_err(|reason| BenchError::Plot {
        path: path.to_path_buf(),
        reason,
    })
}

fn draw_http<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &HttpReport,
    latencies: &[f64],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let title = match (report.concurrency, report.rate_rps) {
        (Some(c), _) => format!("closed loop, {c} clients"),
        (_, Some(r)) => format!("open loop, {r} req/s"),
        _ => report.mode.clone(),
    };
    let root = root
        .titled(
            &format!(
                "{title}: {:.1} ok/s, {} requests in {:.1} s",
                report.throughput_rps, report.requests_sent, report.duration_s
            ),
            (FONT, 22),
        )
        .map_err(err)?;
    let (left, right) = root.split_horizontally(640);

    // Latency histogram of the 2xx answers.
    let bins = 50usize;
    let hi = latencies.iter().copied().fold(0.0f64, f64::max).max(1e-3) * 1.02;
    let width = hi / bins as f64;
    let mut counts = vec![0u64; bins];
    for &v in latencies {
        counts[((v / width) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("Latency distribution (2xx answers)", (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..hi, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency from scheduled send (ms)")
        .y_desc("requests")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            Rectangle::new(
                [(i as f64 * width, 0.0), ((i + 1) as f64 * width, c as f64)],
                BLUE.mix(0.5).filled(),
            )
        }))
        .map_err(err)?;
    let l = &report.latency_ms;
    for (name, value, color) in [
        ("p50", l.p50, GREEN),
        ("p95", l.p95, ORANGE),
        ("p99", l.p99, RED),
    ] {
        chart
            .draw_series(LineSeries::new(
                vec![(value, 0.0), (value, top)],
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{name} {value:.1} ms"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    // Throughput over time.
    let end = report
        .timeline
        .last()
        .map_or(1.0, |p| p.start_s + p.width_s)
        .max(1e-3);
    let rate = |p: &super::report::TimelinePoint| p.answers as f64 / p.width_s;
    let peak = report
        .timeline
        .iter()
        .map(rate)
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("Throughput over time", (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..end, 0f64..peak)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("answers per second")
        .draw()
        .map_err(err)?;
    let mid = |p: &super::report::TimelinePoint| p.start_s + p.width_s / 2.0;
    chart
        .draw_series(LineSeries::new(
            report.timeline.iter().map(|p| (mid(p), p.ok_rps)),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?
        .label("2xx / s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if report.timeline.iter().any(|p| p.answers > p.ok) {
        chart
            .draw_series(LineSeries::new(
                report.timeline.iter().map(|p| (mid(p), rate(p))),
                RED.stroke_width(1),
            ))
            .map_err(err)?
            .label("all answers / s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// `bench sweep --plot`: latency percentiles against throughput, one point per load level.
pub fn sweep_plot(path: &Path, points: &[HttpReport]) -> Result<(), BenchError> {
    let size = (960, 640);
    let result = match kind(path)? {
        Kind::Png => draw_sweep(BitMapBackend::new(path, size).into_drawing_area(), points),
        Kind::Svg => draw_sweep(SVGBackend::new(path, size).into_drawing_area(), points),
    };
    result.map_err(|reason| BenchError::Plot {
        path: path.to_path_buf(),
        reason,
    })
}

fn load_label(r: &HttpReport) -> String {
    match (r.concurrency, r.rate_rps) {
        (Some(c), _) => format!("c={c}"),
        (_, Some(rate)) => format!("r={rate}"),
        _ => String::new(),
    }
}

fn draw_sweep<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    points: &[HttpReport],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let x_hi = points
        .iter()
        .map(|p| p.throughput_rps)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let y_hi = points
        .iter()
        .map(|p| p.latency_ms.p99)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let url = points.first().map(|p| p.url.clone()).unwrap_or_default();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Throughput–latency curve, {url}"), (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_hi, 0f64..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("throughput (2xx answers / s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(err)?;
    type Pick = fn(&HttpReport) -> f64;
    let series: [(&str, Pick, RGBColor); 3] = [
        ("p50", |p| p.latency_ms.p50, GREEN),
        ("p95", |p| p.latency_ms.p95, ORANGE),
        ("p99", |p| p.latency_ms.p99, RED),
    ];
    for (name, pick, color) in series {
        let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.throughput_rps, pick(p))).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                xy.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .draw_series(points.iter().map(|p| {
            Text::new(
                load_label(p),
                (p.throughput_rps, p.latency_ms.p95),
                (FONT, 14).into_font().color(&BLACK),
            )
        }))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
