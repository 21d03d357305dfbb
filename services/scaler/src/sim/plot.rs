//! One SVG per scenario: instances (top) and backlog (bottom) over time, one line per policy.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::SimRun;

const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    BLACK,
];
/// Points per line: enough for the shape, small files.
const MAX_POINTS: usize = 1500;

pub fn scenario(path: &Path, title: &str, outcomes: &[SimRun]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(290);
    let end = outcomes
        .iter()
        .filter_map(|o| o.series.t.last().copied())
        .fold(1.0, f64::max);
    panel(&top, "instances", end, outcomes, |o| &o.series.instances)?;
    panel(&bottom, "backlog (waiting + in flight)", end, outcomes, |o| {
        &o.series.backlog
    })?;
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    label: &str,
    end: f64,
    outcomes: &[SimRun],
    values: impl Fn(&SimRun) -> &Vec<usize>,
) -> anyhow::Result<()> {
    let top = outcomes
        .iter()
        .flat_map(|o| values(o).iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top * 1.05)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (outcome, color) in outcomes.iter().zip(COLORS) {
        let (t, v) = (&outcome.series.t, values(outcome));
        let step = (t.len() / MAX_POINTS).max(1);
        let points = t.iter().zip(v).step_by(step).map(|(&t, &v)| (t, v as f64));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(outcome.row.policy.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
