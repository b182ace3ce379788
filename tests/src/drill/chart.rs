//! A drill's timeline as an SVG picture: new connections per backend per 50 ms, stacked
//! (the failed ones on top), with vertical markers for the fault, its detection and the
//! recovery. The stream is steady, so the stack's height is constant and each band's
//! thickness is that backend's share of the moment: a band that vanishes is a backend out.
//!
//! SVG only: the SVG backend writes text as `<text>` elements for the viewer to render, so
//! it needs no font files. A PNG would need the bitmap backend plus a TrueType font found
//! through fontconfig at run time (plotters' `ttf` feature), which is not worth it for a
//! picture every browser shows as SVG.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use super::{Run, measure::BUCKET};

/// Backend bands, in backend order (the tableau palette).
const BAND_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];
/// Failed connections.
const FAILED: RGBColor = RGBColor(214, 39, 40);
/// Markers.
const MARKER: RGBColor = RGBColor(90, 90, 90);

/// Draws `run`'s timeline into `path` (SVG, 960 x 420).
pub fn draw_svg(run: &Run, path: &Path) -> anyhow::Result<()> {
    draw(run, path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw(run: &Run, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let bucket_ms = BUCKET.as_secs_f64() * 1000.0;
    let t = &run.timeline;
    let buckets = t.failed.len();
    let x0 = t.first as f64 * bucket_ms;
    let x1 = x0 + buckets.max(1) as f64 * bucket_ms;
    // Bands from the bottom: the backends in order, then the failed connections.
    let mut layers: Vec<(String, RGBColor, &[u32])> = run
        .backends
        .iter()
        .zip(&t.answered)
        .enumerate()
        .map(|(i, (name, counts))| {
            (
                name.clone(),
                BAND_COLOURS[i % BAND_COLOURS.len()],
                counts.as_slice(),
            )
        })
        .collect();
    layers.push(("failed".into(), FAILED, t.failed.as_slice()));
    let mut tops = vec![vec![0u32; buckets]; layers.len()];
    for k in 0..buckets {
        let mut sum = 0;
        for (l, (_, _, counts)) in layers.iter().enumerate() {
            sum += counts[k];
            tops[l][k] = sum;
        }
    }
    let peak = tops
        .last()
        .and_then(|top| top.iter().max())
        .copied()
        .unwrap_or(1)
        .max(1);
    // Headroom above the stack for the marker labels.
    let y_max = f64::from(peak) * 1.5 + 1.0;

    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("drill {}: {}", run.scenario, run.scenario.describe()),
            ("sans-serif", 19),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(44)
        .build_cartesian_2d(x0..x1, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("ms from the fault")
        .y_desc(format!("new connections per {} ms", bucket_ms as u32))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .max_light_lines(0)
        .bold_line_style(RGBColor(225, 225, 225))
        .label_style(("sans-serif", 13))
        .draw()?;

    // Steps, not slopes: each bucket is a flat stretch 50 ms wide.
    let steps = |top: &[u32]| -> Vec<(f64, f64)> {
        top.iter()
            .enumerate()
            .flat_map(|(k, &n)| {
                let left = x0 + k as f64 * bucket_ms;
                [(left, f64::from(n)), (left + bucket_ms, f64::from(n))]
            })
            .collect()
    };
    // Highest band first: each lower one is painted over the bands above it.
    for (l, (name, colour, _)) in layers.iter().enumerate().rev() {
        if l + 1 == layers.len() && t.failed.iter().all(|&n| n == 0) {
            continue;
        }
        let colour = *colour;
        chart
            .draw_series(
                AreaSeries::new(steps(&tops[l]), 0.0, colour.mix(0.85))
                    .border_style(colour.stroke_width(1)),
            )?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], colour.filled()));
    }

    // Markers: dashed verticals, labels staggered so close ones do not overlap.
    let in_view: Vec<_> = run
        .markers
        .iter()
        .filter(|m| m.at_ms >= x0 && m.at_ms <= x1)
        .collect();
    for (n, m) in in_view.iter().enumerate() {
        let colour = if n == 0 { FAILED } else { MARKER };
        chart.draw_series(DashedLineSeries::new(
            [(m.at_ms, 0.0), (m.at_ms, y_max)],
            6,
            4,
            colour.stroke_width(2),
        ))?;
        let y = y_max * (0.97 - 0.07 * (n % 4) as f64);
        // Just right of the line.
        let x = m.at_ms + (x1 - x0) * 0.004;
        chart.draw_series(std::iter::once(Text::new(
            format!("{} ({:.0} ms)", m.label, m.at_ms),
            (x, y),
            ("sans-serif", 13).into_font().color(&colour),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}
