//! A dependency-free SVG chart of per-layer peak |activation| per policy, with the f16 limit.

use qwen2_burn::core::diagnose::Diagnosis;

const W: f32 = 720.0;
const H: f32 = 400.0;
const LEFT: f32 = 70.0;
const RIGHT: f32 = 170.0;
const TOP: f32 = 40.0;
const BOTTOM: f32 = 50.0;
const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];
const F16_MAX: f32 = 65504.0;

/// Per-layer peak finite |x| (log scale) for each policy that ran, a dashed line at f16's max,
/// and a × above each layer where a policy went non-finite.
pub fn layer_peaks_svg(d: &Diagnosis) -> String {
    let runs: Vec<_> = d
        .runs
        .iter()
        .filter(|r| r.skipped.is_none() && !r.layer_peaks.is_empty())
        .collect();
    let layers = runs.iter().map(|r| r.layer_peaks.len()).max().unwrap_or(1);
    let peaks = runs
        .iter()
        .flat_map(|r| r.layer_peaks.iter().copied())
        .filter(|p| *p > 0.0);
    let hi = peaks.clone().fold(F16_MAX, f32::max).log10().ceil() + 0.5;
    let lo = peaks.fold(F16_MAX, f32::min).log10().floor().min(hi - 2.0);
    let x = |layer: usize| LEFT + (W - LEFT - RIGHT) * (layer as f32 + 0.5) / layers as f32;
    let y = |v: f32| TOP + (H - TOP - BOTTOM) * (hi - v.max(1e-30).log10()) / (hi - lo);

    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" font-size=\"15\">Peak |activation| per layer ({}; {} positions)</text>\n",
        escape(&d.hardware.name),
        d.positions
    );
    for e in (lo as i32)..=(hi as i32) {
        let yy = y(10f32.powi(e));
        s += &format!(
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">1e{e}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    for l in 0..layers {
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{l}</text>\n",
            x(l),
            H - BOTTOM + 18.0
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">decoder layer</text>\n",
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    );
    let fy = y(F16_MAX);
    s += &format!(
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{fy}\" y2=\"{fy}\" stroke=\"black\" stroke-dasharray=\"6 4\"/>\
         <text x=\"{}\" y=\"{}\">f16 max 65504</text>\n",
        W - RIGHT,
        LEFT + 4.0,
        fy - 5.0
    );
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = r
            .layer_peaks
            .iter()
            .enumerate()
            .map(|(l, p)| format!("{},{}", x(l), y(*p)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        );
        for (l, p) in r.layer_peaks.iter().enumerate() {
            s += &format!(
                "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{color}\"/>\n",
                x(l),
                y(*p)
            );
        }
        let nonfinite_layers = r
            .layer_nonfinite
            .iter()
            .enumerate()
            .filter(|(_, bad)| **bad);
        for (l, _) in nonfinite_layers {
            let (cx, cy) = (x(l), TOP + 8.0 + 10.0 * i as f32);
            s +=
                &format!(
                "<path d=\"M{} {} L{} {} M{} {} L{} {}\" stroke=\"{color}\" stroke-width=\"2\"/>\n",
                cx - 4.0, cy - 4.0, cx + 4.0, cy + 4.0, cx - 4.0, cy + 4.0, cx + 4.0, cy - 4.0
            );
        }
        let label = format!(
            "{}{}",
            r.policy.name(),
            if r.finite { "" } else { " (non-finite: ×)" }
        );
        let ly = TOP + 30.0 + 18.0 * i as f32;
        s += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{label}</text>\n",
            W - RIGHT + 6.0,
            ly - 4.0,
            W - RIGHT + 22.0,
            ly
        );
    }
    s += "</svg>\n";
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
