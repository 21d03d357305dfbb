//! `--plot`: one SVG of a run, three panels over the same time axis: the instances (running,
//! pending, stopping, desired), the backlog, and every request's latency at the moment it was
//! answered (errors in red). The picture of a burst scaling out and back in.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::timeline::Sample;

/// One request: sent `sent` seconds after the first, answered after `latency` seconds.
pub struct Point {
    pub sent: f64,
    pub latency: f64,
    pub ok: bool,
}

const RUNNING: RGBColor = RGBColor(44, 160, 44);
const PENDING: RGBColor = RGBColor(255, 127, 14);
const STOPPING: RGBColor = RGBColor(127, 127, 127);
const ERROR: RGBColor = RGBColor(214, 39, 40);
const OK: RGBColor = RGBColor(31, 119, 180);

/// A line of the instances panel: its label, colour and value at a sample.
type Line = (&'static str, RGBColor, fn(&Sample) -> f64);

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

pub fn timeline(path: &Path, title: &str, samples: &[Sample], requests: &[Point]) -> anyhow::Result<()> {
    let end = samples
        .iter()
        .map(|s| s.t)
        .chain(requests.iter().map(|r| r.sent + r.latency))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (960, 780)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let panels = root.split_evenly((3, 1));
    instances(&panels[0], end, samples)?;
    backlog(&panels[1], end, samples)?;
    latencies(&panels[2], end, requests)?;
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

fn instances<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, end: f64, samples: &[Sample]) -> anyhow::Result<()> {
    let most = samples
        .iter()
        .map(|s| s.alive().max(s.desired.unwrap_or(0)))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = panel(area, end, most)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("instances")
        .y_labels((most as usize + 1).min(11))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    let lines: [Line; 4] = [
        ("running", RUNNING, |s| s.running as f64),
        ("pending", PENDING, |s| s.pending as f64),
        ("stopping", STOPPING, |s| s.stopping as f64),
        ("desired", BLACK, |s| s.desired.unwrap_or(0) as f64),
    ];
    for (label, color, value) in lines {
        let width = if label == "desired" { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(steps(samples, value), color.stroke_width(width)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn backlog<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, end: f64, samples: &[Sample]) -> anyhow::Result<()> {
    let deepest = samples.iter().map(|s| s.backlog).max().unwrap_or(1).max(1) as f64;
    let mut chart = panel(area, end, deepest)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("backlog (waiting + in flight)")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            steps(samples, |s| s.backlog as f64),
            OK.stroke_width(2),
        ))
        .map_err(err)?;
    Ok(())
}

fn latencies<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, end: f64, requests: &[Point]) -> anyhow::Result<()> {
    let slowest = requests.iter().map(|r| r.latency).fold(0.1, f64::max);
    let mut chart = panel(area, end, slowest)?;
    chart
        .configure_mesh()
        .x_desc("seconds (when each request was answered)")
        .y_desc("latency, s")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(requests.iter().map(|r| {
            let color = if r.ok { OK } else { ERROR };
            Circle::new((r.sent + r.latency, r.latency), 2, color.filled())
        }))
        .map_err(err)?;
    Ok(())
}

/// One panel over the run's time axis, up to a tenth above `top`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    end: f64,
    top: f64,
) -> anyhow::Result<ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top * 1.1)
        .map_err(err)
}

/// A count holds until the next sample: draw it as steps, not slopes.
fn steps(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(samples.len() * 2);
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            points.push((s.t, value(&samples[i - 1])));
        }
        points.push((s.t, value(s)));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_becomes_an_svg_with_every_request_and_every_panel() {
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample {
                t: i as f64 * 0.25,
                desired: Some(if i < 30 { 4 } else { 0 }),
                pending: usize::from(i < 4) * 4,
                running: if (4..30).contains(&i) { 4 } else { 0 },
                stopping: usize::from((30..34).contains(&i)) * 4,
                backlog: 100u64.saturating_sub(i * 4),
            })
            .collect();
        let requests: Vec<Point> = (0..100)
            .map(|i| Point {
                sent: i as f64 * 0.01,
                latency: 1.0 + i as f64 * 0.05,
                ok: i != 7,
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.svg");
        timeline(&path, "100 uploads", &samples, &requests).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert_eq!(svg.matches("<circle").count(), 100, "one dot per request");
        assert_eq!(svg.matches("fill=\"#D62728\"").count(), 1, "the one error in red");
        for text in [
            "100 uploads",
            "instances",
            "running",
            "pending",
            "stopping",
            "desired",
            "backlog",
            "latency, s",
        ] {
            assert!(svg.contains(text), "{text}");
        }
    }
}
