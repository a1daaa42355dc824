//! The PNG of per-class throughput over time (bench/throughput.png).

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use plotters::prelude::*;

use super::report::{Event, Series};

/// Debian's fonts-dejavu-core (installed by `cargo xtask setup`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn register_font() -> Result<()> {
    let bytes =
        std::fs::read(FONT).with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can use"))
}

/// Draws `series` (bit/s over seconds) with `events` as labelled vertical lines.
pub fn draw(path: &Path, title: &str, series: &[Series], events: &[Event]) -> Result<()> {
    if series.is_empty() {
        bail!("nothing to plot");
    }
    register_font()?;
    let end = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max);
    let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1 / 1e6)).fold(1.0, f64::max) * 1.45;
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("Mbit/s (frames on the wire)")
        .label_style(("sans-serif", 15))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, event) in events.iter().enumerate() {
        // Labels alternate between two heights so neighbours do not overlap.
        let y = if i % 2 == 0 { 0.97 } else { 0.91 };
        chart
            .draw_series(LineSeries::new([(event.at, 0.0), (event.at, top)], RGBColor(0x99, 0x99, 0x99)))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                event.label.clone(),
                (event.at + end * 0.005, top * y),
                ("sans-serif", 14).into_font().color(&RGBColor(0x55, 0x55, 0x55)),
            )))
            .map_err(|e| fail(&e))?;
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|&(t, bps)| (t, bps / 1e6)),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .margin(55)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
