//! `bench.svg`: every comparison of a [`Report`] as a horizontal bar of
//! figure / baseline on a log scale, with a vertical line at 1 (as fast as
//! the baseline). A ratio is what holds on a noisy shared machine, so that
//! is what the chart shows; the medians are written beside each bar.
//!
//! SVG only, through plotters' SVG backend: it writes text as `<text>`
//! elements for the viewer to render, so no fonts, fontconfig or freetype
//! are needed here (plotters only estimates text widths for the layout).

use super::{Comparison, Report};
use anyhow::{Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Width of the picture in pixels.
const WIDTH: u32 = 1100;
/// Height per bar, in pixels.
const ROW: u32 = 46;
/// Height of the title, axis and margins around the bars, in pixels.
const FRAME: u32 = 150;
/// Font size of labels, in pixels.
const FONT: u32 = 14;
/// Pixels reserved right of the longest bar for its annotation.
const ANNOTATION: f64 = 320.0;
/// Colour of a bar without a target.
const PLAIN: RGBColor = RGBColor(70, 110, 170);
/// Colour of a bar that meets its target.
const MET: RGBColor = RGBColor(40, 140, 70);
/// Colour of a bar that misses its target.
const MISSED: RGBColor = RGBColor(190, 60, 50);

/// Writes the report's comparisons as a bar chart to `path` (SVG).
pub fn write_svg(report: &Report, path: &Path) -> Result<()> {
    let rows = report.comparisons.len().max(1);
    let height = FRAME + ROW * u32::try_from(rows).context("too many comparisons")?;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    draw(report, &root).with_context(|| format!("drawing {}", path.display()))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The ratio to draw, if it is one (a failed figure may give NaN or 0).
fn drawable(c: &Comparison) -> Option<f64> {
    (c.ratio.is_finite() && c.ratio > 0.0).then_some(c.ratio)
}

/// The x range: 1 and every ratio with some room on the left, and on the
/// right room for the annotation after the longest bar, which takes
/// `ANNOTATION` of `plot_px` pixels.
fn x_range(report: &Report, plot_px: f64) -> (f64, f64) {
    let ratios = report.comparisons.iter().filter_map(drawable);
    let lo = ratios.clone().fold(1.0, f64::min) / 1.5;
    let hi = ratios.fold(1.0, f64::max);
    // On a log axis the annotation's share f of the width needs
    // ln(right / hi) = f / (1 - f) * ln(hi / lo).
    let f = (ANNOTATION / plot_px).clamp(0.1, 0.6);
    let right = hi * ((hi / lo).ln() * f / (1.0 - f)).exp();
    (lo, right.max(hi * 1.5))
}

/// Draws the chart on `root`.
fn draw(report: &Report, root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<()> {
    root.fill(&WHITE).map_err(plot_error)?;
    let n = report.comparisons.len();
    let rows = i32::try_from(n.max(1)).context("too many comparisons")?;
    // An integer range counts both ends: 0..=rows-1 is `rows` segments
    // (one alone would have zero length, so a single bar gets an empty row).
    let top = (rows - 1).max(1);
    let longest = report
        .comparisons
        .iter()
        .map(|c| c.figure.name.chars().count())
        .max()
        .unwrap_or(0);
    // About 0.6 em per character at FONT pixels, within reason.
    let label_px = ((longest as f64 * f64::from(FONT) * 0.6) as u32 + 20).clamp(120, 520);
    let plot_px = f64::from(WIDTH - label_px - 40);
    let (lo, hi) = x_range(report, plot_px);
    let title = format!(
        "shmos bench: figure / baseline, accelerator {}, {}",
        report.accel, report.date
    );
    let subtitle = format!(
        "{}; median of {} runs x {} iterations",
        report.machine, report.runs, report.iterations
    );
    let area = root
        .titled(&title, ("sans-serif", 18))
        .map_err(plot_error)?
        .titled(&subtitle, ("sans-serif", FONT))
        .map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&area)
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(label_px)
        .build_cartesian_2d((lo..hi).log_scale(), (0..top).into_segmented())
        .map_err(plot_error)?;
    // Row 0 at the top: segments count upwards, so comparison i is row n-1-i.
    let row_of = |i: usize| rows - 1 - i as i32;
    let name_of = |seg: &SegmentValue<i32>| match seg {
        SegmentValue::CenterOf(r) => usize::try_from(rows - 1 - r)
            .ok()
            .and_then(|i| report.comparisons.get(i))
            .map(|c| c.figure.name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(1))
        .y_label_formatter(&name_of)
        .x_labels(12)
        .x_label_formatter(&|x| tick(*x))
        .x_desc("ratio to its baseline, log scale (1 = same as the baseline)")
        .label_style(("sans-serif", FONT))
        .axis_desc_style(("sans-serif", FONT))
        .draw()
        .map_err(plot_error)?;
    let bars = report.comparisons.iter().enumerate().filter_map(|(i, c)| {
        let r = drawable(c)?;
        let row = row_of(i);
        let mut bar = Rectangle::new(
            [
                (r.min(1.0), SegmentValue::Exact(row)),
                (r.max(1.0), SegmentValue::Exact(row + 1)),
            ],
            colour(c).filled(),
        );
        // Gaps between neighbouring bars.
        bar.set_margin(8, 8, 0, 0);
        Some(bar)
    });
    chart.draw_series(bars).map_err(plot_error)?;
    let notes = report.comparisons.iter().enumerate().map(|(i, c)| {
        let at = drawable(c).map_or(1.0, |r| r.max(1.0));
        let style = ("sans-serif", FONT - 2)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        // A few pixels after the bar's end (SVG collapses leading spaces).
        EmptyElement::at((at, SegmentValue::CenterOf(row_of(i))))
            + Text::new(annotation(c), (6, 0), style)
    });
    chart.draw_series(notes).map_err(plot_error)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(2),
        )))
        .map_err(plot_error)?;
    Ok(())
}

/// An x-axis label: ratios to two significant digits at most.
fn tick(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A bar's colour: whether it meets its target, if it has one.
fn colour(c: &Comparison) -> RGBColor {
    match c.met {
        Some(true) => MET,
        Some(false) => MISSED,
        None => PLAIN,
    }
}

/// What is written beside a bar: the ratio, both medians and the target
/// (the baselines' names are in the table; here they would crowd the bars).
fn annotation(c: &Comparison) -> String {
    let mut s = match drawable(c) {
        Some(r) => format!("{r:.2}x"),
        None => "no ratio".to_owned(),
    };
    s += &format!(
        " ({:.1} {} / {:.1} {})",
        c.figure.median, c.figure.unit, c.baseline.median, c.baseline.unit
    );
    if let Some(t) = &c.target {
        let verdict = match c.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "?",
        };
        s += &format!(", target {t}: {verdict}");
    }
    s
}

/// Plotters' errors borrow nothing but are generic; anyhow wants them boxed.
fn plot_error<E: std::error::Error + Send + Sync + 'static>(
    e: plotters::drawing::DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::Error::new(e)
}

#[cfg(test)]
mod tests {
    use super::super::{Figure, Report};
    use super::*;

    fn fig(name: &str, median: f64) -> Figure {
        Figure {
            name: name.into(),
            unit: "µs",
            median,
            min: median,
            max: median,
            runs: vec![median],
        }
    }

    fn comparison(name: &str, shmos: f64, base: f64, target: Option<f64>) -> Comparison {
        let ratio = shmos / base;
        Comparison {
            key: name.into(),
            figure: fig(name, shmos),
            baseline: fig(&format!("{name}, baseline"), base),
            ratio,
            target: target.map(|t| format!("<= {t}")),
            met: target.map(|t| ratio <= t),
        }
    }

    fn report(comparisons: Vec<Comparison>) -> Report {
        Report {
            accel: "kvm".into(),
            date: "2025-01-02T03:04:05Z".into(),
            machine: "Some CPU @ 2 GHz, 2 cores".into(),
            runs: 5,
            iterations: 1000,
            comparisons,
        }
    }

    /// Draws `r` to a temporary file and reads the SVG back.
    fn render(r: &Report) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bench.svg");
        write_svg(r, &path).expect("chart");
        std::fs::read_to_string(&path).expect("read back")
    }

    #[test]
    fn svg_has_bars_labels_and_targets() {
        let r = report(vec![
            comparison("doorbell round trip, 2 VMs, shmos path", 33.0, 30.0, None),
            comparison("message round trip, 64 B <&>", 4.0, 0.2, Some(3.0)),
            comparison("64 KiB throughput", 900.0, 9000.0, Some(3.0)),
            comparison("broken figure", f64::NAN, 1.0, None),
        ]);
        let svg = render(&r);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("doorbell round trip, 2 VMs, shmos path"));
        assert!(svg.contains("broken figure"));
        assert!(svg.contains("accelerator kvm, 2025-01-02T03:04:05Z"));
        assert!(svg.contains("Some CPU @ 2 GHz, 2 cores; median of 5 runs x 1000 iterations"));
        assert!(svg.contains("round trip, 64 B &lt;&amp;&gt;"), "escaped");
        assert!(svg.contains("20.00x") && svg.contains("0.10x") && svg.contains("no ratio"));
        assert!(svg.contains("target &lt;= 3: missed"));
        assert!(svg.contains("target &lt;= 3: met"));
        // Three drawable bars: one plain, one missed, one met.
        for colour in ["#466EAA", "#BE3C32", "#288C46"] {
            let fill = format!("fill=\"{colour}\"");
            assert_eq!(svg.matches(&fill).count(), 1, "{colour} in {svg}");
        }
    }

    #[test]
    fn empty_report_still_draws() {
        assert!(render(&report(vec![])).contains("accelerator kvm"));
    }
}
