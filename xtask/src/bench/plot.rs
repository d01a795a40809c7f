//! `benchmarks/collection-cost.svg`: collection CPU per cycle against process count,
//! both sources, log–log (plotters, SVG backend only).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::daemon::Source;

/// (processes, median, min, max) in ms per cycle.
pub type Points = Vec<(f64, f64, f64, f64)>;
pub type Series = [(Source, Points)];

/// `series`: per source, points (processes, median, min, max) in ms per cycle, joined by
/// lines; `idle`: the same for idle tasks, drawn as open markers.
fn series_color(source: Source) -> RGBColor {
    match source {
        Source::Ebpf => BLUE,
        Source::Procfs => RED,
    }
}

pub fn collection_cost(path: &Path, series: &Series, idle: &Series) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let all: Vec<f64> = series
        .iter()
        .chain(idle)
        .flat_map(|(_, pts)| pts.iter().flat_map(|p| [p.2, p.3]))
        .filter(|v| *v > 0.0)
        .collect();
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let (lo, hi) = if all.is_empty() {
        (0.01, 100.0)
    } else {
        (lo / 2.0, hi * 2.0)
    };
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "nomad-collector: CPU per collection cycle",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((50f64..20_000f64).log_scale(), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("processes in task cgroups (10 per task)")
        .y_desc("daemon CPU per cycle (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (source, pts) in series {
        if pts.is_empty() {
            continue;
        }
        let color = series_color(*source);
        let label = match source {
            Source::Ebpf => "eBPF (every process and cgroup file, every interval)",
            Source::Procfs => "procfs (Nomad's method)",
        };
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
            )
            .map_err(|e| err(&e))?;
        // min–max of the runs
        chart
            .draw_series(pts.iter().map(|p| {
                PathElement::new(vec![(p.0, p.2.max(lo)), (p.0, p.3)], color.stroke_width(1))
            }))
            .map_err(|e| err(&e))?;
    }
    for (source, pts) in idle {
        if pts.is_empty() {
            continue;
        }
        let color = series_color(*source);
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.1), 6, color.stroke_width(2))),
            )
            .map_err(|e| err(&e))?
            .label(match source {
                Source::Ebpf => "eBPF, all tasks idle",
                Source::Procfs => "procfs, all tasks idle",
            })
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
