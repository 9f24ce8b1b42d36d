//! PNG plots of the sweep: one line per path over the connection counts (log2 axis).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::measure::Row;
use super::report::{cpu_total, wrk_median};
use super::Settings;

/// plotters' ab_glyph text needs a registered font; DejaVu Sans (Debian's
/// fonts-dejavu-core) is read at run time, so the build needs no font or system library.
pub(super) const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT)
            .map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core; bench/peers.sh does)"))?;
        // plotters keeps the font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT}: not a font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A path's colour, the same in every plot.
fn colour(path: &str) -> RGBColor {
    match path {
        "direct" => RGBColor(0, 0, 0),
        "burrow-grpc" => RGBColor(31, 119, 180),
        "burrow-ws" => RGBColor(23, 190, 207),
        "burrow-grpcs" => RGBColor(148, 103, 189),
        "burrow-2rep" => RGBColor(44, 160, 44),
        "rathole" => RGBColor(214, 39, 40),
        "bore" => RGBColor(255, 127, 14),
        _ => RGBColor(127, 127, 127),
    }
}

type Series = (String, Vec<(f64, f64)>);

fn draw<Y>(
    file: &Path,
    title: &str,
    y_desc: &str,
    x_max: f64,
    y_range: Y,
    series: &[Series],
) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = BitMapBackend::new(file, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    // At least one doubling wide, so a single connection count still draws.
    let x_range = (1f64..x_max.max(2.0)).log_scale().base(2.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("wrk connections")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (name, points) in series {
        let c = colour(name);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}")).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// The medians of `f` per path over the connection counts; paths without any are left
/// out (no CPU line for direct).
fn series(rows: &[Row], settings: &Settings, f: &dyn Fn(&Row) -> Option<f64>) -> Vec<Series> {
    settings
        .paths
        .iter()
        .map(|p| {
            let points = settings
                .connections
                .iter()
                .filter_map(|&c| wrk_median(rows, p, c, f).map(|v| (f64::from(c), v)))
                .collect::<Vec<_>>();
            (p.to_string(), points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect()
}

/// Bounds of a log axis around every value (positive ones only).
fn log_bounds(series: &[Series]) -> (f64, f64) {
    let values = series.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v)).filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo.is_finite() {
        (lo / 1.5, hi * 1.5)
    } else {
        (1.0, 10.0)
    }
}

/// Writes req/s, p99 and CPU-per-request plots; returns their files.
pub(super) fn write(dir: &Path, rows: &[Row], settings: &Settings) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let x_max = settings.connections.iter().copied().max().unwrap_or(1) as f64;
    let sub =
        format!("median of {} run(s), wrk -d {}s, 13-byte file from nginx", settings.runs, settings.secs);

    let rate = series(rows, settings, &|r| Some(r.wrk.req_per_s));
    let top = rate.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v)).fold(0f64, f64::max).max(1.0);
    let reqs = dir.join("req_per_s.png");
    draw(&reqs, &format!("Requests/s vs connections ({sub})"), "requests/s", x_max, 0f64..top * 1.1, &rate)?;

    let p99 = series(rows, settings, &|r| Some(r.wrk.p99_us));
    let (lo, hi) = log_bounds(&p99);
    let p99_file = dir.join("p99_latency.png");
    draw(
        &p99_file,
        &format!("p99 latency vs connections ({sub})"),
        "p99 latency, µs (log scale)",
        x_max,
        (lo..hi).log_scale().base(2.0),
        &p99,
    )?;

    let cpu = series(rows, settings, &|r| cpu_total(r, settings));
    let top = cpu.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v)).fold(0f64, f64::max).max(1.0);
    let cpu_file = dir.join("cpu_per_request.png");
    draw(
        &cpu_file,
        "Tunnel CPU per request (host + agent side, utime + stime) vs connections",
        "CPU µs per request",
        x_max,
        0f64..top * 1.1,
        &cpu,
    )?;
    Ok(vec![reqs, p99_file, cpu_file])
}
