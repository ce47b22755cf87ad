//! Learning curves (train and test bits/dim against step) as a PNG.
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// `train`/`test`: `(step, bits/dim)` points.
pub fn plot_curves(path: &Path, train: &[(f64, f64)], test: &[(f64, f64)]) -> Result<()> {
    register_font();
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let all: Vec<&(f64, f64)> = train.iter().chain(test).filter(|p| p.1.is_finite()).collect();
        let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
        let (mut y_min, mut y_max) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if all.is_empty() {
            (y_min, y_max) = (0.0, 1.0);
        }
        let margin = ((y_max - y_min) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(&root)
            .caption("bits/dim", ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min - margin)..(y_max + margin))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.configure_mesh().x_desc("step").y_desc("bits/dim").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(train.iter().copied().filter(|p| p.1.is_finite()), &BLUE))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(test.iter().copied().filter(|p| p.1.is_finite()), RED.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("test")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
