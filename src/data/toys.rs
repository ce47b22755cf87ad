//! Seeded 2-D toy densities (the usual flow benchmarks): two moons, circles, 8 Gaussians,
//! checkerboard, pinwheel, two spirals. Generated in Rust with [`crate::rng`] so the files are the
//! same on every machine.
use crate::rng::SplitMix64;
use anyhow::{bail, Result};

pub const NAMES: &[&str] = &["moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals"];

pub fn generate(name: &str, n: usize, seed: u64) -> Result<Vec<[f64; 2]>> {
    // The whitening constant is part of the committed toy files (data/toys, `make toys`).
    let mut r = SplitMix64::from_state(seed ^ 0xD1B5_4A32_D192_ED03);
    let pi = std::f64::consts::PI;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = match name {
            "moons" => {
                let t = pi * r.uniform();
                let (x, y) = if i % 2 == 0 { (t.cos(), t.sin()) } else { (1.0 - t.cos(), 0.5 - t.sin()) };
                [x + 0.1 * r.normal() - 0.5, y + 0.1 * r.normal() - 0.25]
            }
            "circles" => {
                let t = 2.0 * pi * r.uniform();
                let rad = if i % 2 == 0 { 1.0 } else { 0.5 };
                [rad * t.cos() + 0.08 * r.normal(), rad * t.sin() + 0.08 * r.normal()]
            }
            "8gaussians" => {
                let k = (r.next_u64() % 8) as f64;
                let a = k * pi / 4.0;
                [2.0 * a.cos() + 0.2 * r.normal(), 2.0 * a.sin() + 0.2 * r.normal()]
            }
            "checkerboard" => {
                let x1 = r.uniform() * 4.0 - 2.0;
                let x2 = r.uniform() - (r.next_u64() % 2) as f64 * 2.0;
                [x1, x2 + x1.floor().rem_euclid(2.0)]
            }
            "pinwheel" => {
                let k = (r.next_u64() % 5) as f64;
                let (a, b) = (0.3 * r.normal() + 1.0, 0.05 * r.normal());
                let angle = k * 2.0 * pi / 5.0 + 0.25 * (a - 1.0).exp();
                [2.0 * (a * angle.cos() - b * angle.sin()), 2.0 * (a * angle.sin() + b * angle.cos())]
            }
            "2spirals" => {
                let t = r.uniform().sqrt() * 540.0 * (2.0 * pi) / 360.0;
                let s = if i % 2 == 0 { 1.0 } else { -1.0 };
                [s * (-t.cos() * t) / 3.0 + 0.1 * r.normal(), s * (t.sin() * t) / 3.0 + 0.1 * r.normal()]
            }
            _ => bail!("unknown toy {name:?}: one of {}", NAMES.join(", ")),
        };
        out.push(p);
    }
    Ok(out)
}

/// CSV text with header `x,y`.
pub fn to_csv(points: &[[f64; 2]]) -> String {
    let mut s = String::from("x,y\n");
    for p in points {
        s.push_str(&format!("{:.6},{:.6}\n", p[0], p[1]));
    }
    s
}

/// The conditional variant of a toy (`flowzoo toy NAME --rotate`): each point gets a context
/// `rotation` drawn uniformly from [0, 1) (its own stream: the points are the toy's own) and is
/// turned by `rotation · π` about the origin, so p(x, y | rotation) is the toy turned by that
/// angle: a context that visibly moves the density.
pub fn rotate(points: &[[f64; 2]], seed: u64) -> Vec<[f64; 3]> {
    let mut r = SplitMix64::from_state(seed ^ 0x6A09_E667_F3BC_C908);
    points
        .iter()
        .map(|p| {
            let c = r.uniform();
            let (sin, cos) = (c * std::f64::consts::PI).sin_cos();
            [cos * p[0] - sin * p[1], sin * p[0] + cos * p[1], c]
        })
        .collect()
}

/// CSV text with header `x,y,rotation`.
pub fn rotated_to_csv(points: &[[f64; 3]]) -> String {
    let mut s = String::from("x,y,rotation\n");
    for p in points {
        s.push_str(&format!("{:.6},{:.6},{:.6}\n", p[0], p[1], p[2]));
    }
    s
}
