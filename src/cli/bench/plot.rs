//! The benchmark's picture: latency per head against context length, log-log, one line per
//! method and pattern, as SVG.

use super::record::Record;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Title of the plot.
pub const TITLE: &str = "Attention latency per head vs context length";
/// The x axis label.
pub const X_LABEL: &str = "context length (tokens)";
/// The y axis label.
pub const Y_LABEL: &str = "latency per head (ms, median)";

/// Points of each series (method and pattern), sorted by length.
fn series(records: &[Record]) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for record in records.iter().filter(|r| r.per_head_ms > 0.0 && r.per_head_ms.is_finite() && r.seq > 0) {
        lines.entry(record.series()).or_default().push((record.seq as f64, record.per_head_ms));
    }
    for points in lines.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

/// The SVG text of the plot of `records` (per-head latency, so cases measured on fewer heads fit
/// the same axes).
pub fn latency_svg(records: &[Record]) -> Result<String, String> {
    let lines = series(records);
    let points = || lines.values().flatten();
    let (Some(x_min), Some(x_max)) = (points().map(|p| p.0).reduce(f64::min), points().map(|p| p.0).reduce(f64::max))
    else {
        return Err("nothing to plot: no record has both a positive length and a positive time".into());
    };
    let y_min = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 700)).into_drawing_area();
        let draw_error = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing the plot: {e}");
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(TITLE, ("sans-serif", 24))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x_min / 1.2..x_max * 1.2).log_scale().base(2.0),
                (y_min / 1.5..y_max * 1.5).log_scale().base(2.0),
            )
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(X_LABEL)
            .y_desc(Y_LABEL)
            // Bold ticks fall on powers of two (the benchmark's lengths); the light ticks between
            // them stay unlabelled.
            .x_label_formatter(&|x| if x.log2().fract() == 0.0 { tokens(*x) } else { String::new() })
            .y_label_formatter(&|y| milliseconds(*y))
            .draw()
            .map_err(draw_error)?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(draw_error)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(draw_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// Writes the plot of `records` to `path`.
pub fn write_latency_svg(records: &[Record], path: &Path) -> Result<(), String> {
    let svg = latency_svg(records)?;
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))
}

/// `32K`, `1M`, or the plain number for lengths that are not whole multiples.
pub fn tokens(seq: f64) -> String {
    let n = seq.round();
    if n >= 1_048_576.0 && (n / 1_048_576.0).fract() == 0.0 {
        format!("{}M", n / 1_048_576.0)
    } else if n >= 1024.0 && (n / 1024.0).fract() == 0.0 {
        format!("{}K", n / 1024.0)
    } else {
        format!("{n}")
    }
}

/// A tick label in milliseconds with as many decimals as the magnitude needs.
fn milliseconds(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}
