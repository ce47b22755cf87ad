//! Importance-sampling estimates from log-weights `log w_i = log p̃(x_i) − log q(x_i)`,
//! `x_i ~ q`: the ELBO, `log Z = log ∫ p̃`, its standard error, and Kish's effective sample
//! size. Everything is computed in float64 relative to the largest log-weight, so no weight
//! overflows or underflows.
use serde::Serialize;

/// What `flowzoo eval --target` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IsEstimate {
    /// `mean(log w)` over the finite log-weights: a Monte Carlo estimate of the ELBO, a lower
    /// bound on `log Z`.
    pub elbo: f64,
    /// `log((1/n) Σ w_i)`, a log-mean-exp: consistent for `log Z` (biased low by about
    /// `stderr² / 2` for finite n).
    pub log_z: f64,
    /// Delta-method standard error of `log_z`: `se(Ẑ) / Ẑ` with `se(Ẑ)² = s²(w) / n`, which
    /// equals `sqrt((n / ESS − 1) / (n − 1))`.
    pub log_z_stderr: f64,
    /// Kish's effective sample size `(Σ w)² / Σ w²` as a fraction of n: 1 for a perfect
    /// proposal (`q ∝ p̃`), near 1/n when one weight dominates.
    pub ess_fraction: f64,
    /// Draws used (finite log-weights and `−∞` ones, which are weight 0).
    pub n: usize,
    /// Draws left out: NaN or `+∞` log-weights.
    pub excluded: usize,
    /// Draws with `log w = −∞` (the target is 0 there): counted in n with weight 0, left out
    /// of the ELBO's mean.
    pub zero_weight: usize,
}

impl IsEstimate {
    /// `{"elbo": e, "log_z": z, "log_z_stderr": s, "ess_fraction": f}`, in that order, on one
    /// line (what `flowzoo eval --target --json` prints; a NaN is `null`).
    pub fn to_json_line(&self) -> String {
        let num = |v: f64| serde_json::to_string(&v).unwrap_or_else(|_| "null".into());
        format!(
            "{{\"elbo\": {}, \"log_z\": {}, \"log_z_stderr\": {}, \"ess_fraction\": {}}}",
            num(self.elbo),
            num(self.log_z),
            num(self.log_z_stderr),
            num(self.ess_fraction)
        )
    }
}

/// The estimates of [`IsEstimate`] from log-weights (any order). NaN and `+∞` log-weights are
/// left out and counted; `−∞` is a weight of 0. With no usable weight every estimate is NaN.
pub fn importance_estimates(log_w: &[f64]) -> IsEstimate {
    let excluded = log_w.iter().filter(|v| v.is_nan() || **v == f64::INFINITY).count();
    let used: Vec<f64> = log_w.iter().copied().filter(|v| !v.is_nan() && *v != f64::INFINITY).collect();
    let finite: Vec<f64> = used.iter().copied().filter(|v| v.is_finite()).collect();
    let n = used.len();
    let zero_weight = n - finite.len();
    let nan = IsEstimate { elbo: f64::NAN, log_z: f64::NAN, log_z_stderr: f64::NAN, ess_fraction: f64::NAN, n, excluded, zero_weight };
    if finite.is_empty() {
        return nan;
    }
    let elbo = finite.iter().sum::<f64>() / finite.len() as f64;
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Scaled weights w_i / max_j w_j in (0, 1]; the zero weights add nothing to either sum.
    let (s1, s2) = finite.iter().fold((0.0f64, 0.0f64), |(a, b), &v| {
        let w = (v - max).exp();
        (a + w, b + w * w)
    });
    let nf = n as f64;
    let log_z = max + s1.ln() - nf.ln();
    let ess = s1 * s1 / s2;
    let log_z_stderr = if n > 1 { ((nf / ess - 1.0).max(0.0) / (nf - 1.0)).sqrt() } else { f64::NAN };
    IsEstimate { elbo, log_z, log_z_stderr, ess_fraction: ess / nf, n, excluded, zero_weight }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_are_a_perfect_proposal() {
        let e = importance_estimates(&[-3.0; 10]);
        assert!((e.log_z + 3.0).abs() < 1e-12 && (e.elbo + 3.0).abs() < 1e-12);
        assert!((e.ess_fraction - 1.0).abs() < 1e-12 && e.log_z_stderr.abs() < 1e-7);
    }

    #[test]
    fn stderr_matches_the_delta_method_on_the_weights() {
        let lw = [0.0, 1.0, -2.0, 0.5, 3.0, -1.0];
        let e = importance_estimates(&lw);
        let w: Vec<f64> = lw.iter().map(|v: &f64| v.exp()).collect();
        let n = w.len() as f64;
        let mean = w.iter().sum::<f64>() / n;
        let var = w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!((e.log_z - mean.ln()).abs() < 1e-12);
        assert!((e.log_z_stderr - (var / n).sqrt() / mean).abs() < 1e-12, "{e:?}");
        let ess = w.iter().sum::<f64>().powi(2) / w.iter().map(|v| v * v).sum::<f64>();
        assert!((e.ess_fraction - ess / n).abs() < 1e-12);
        assert!((e.elbo - lw.iter().sum::<f64>() / n).abs() < 1e-12);
    }

    #[test]
    fn huge_log_weights_do_not_overflow_and_bad_ones_are_counted() {
        let e = importance_estimates(&[1000.0, 1000.0, f64::NEG_INFINITY, f64::NAN, f64::INFINITY]);
        assert!((e.log_z - (1000.0 + (2.0f64 / 3.0).ln())).abs() < 1e-9, "{e:?}");
        assert_eq!((e.n, e.excluded, e.zero_weight), (3, 2, 1));
        assert!((e.ess_fraction - 2.0 / 3.0).abs() < 1e-12 && e.elbo == 1000.0);
        assert!(importance_estimates(&[f64::NAN]).log_z.is_nan());
    }

    #[test]
    fn the_json_line_has_the_four_keys_in_order() {
        let line = importance_estimates(&[0.0, 0.5]).to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 4);
        assert!(line.starts_with("{\"elbo\": 0.25, \"log_z\": ") && line.contains(", \"log_z_stderr\": ") && line.contains(", \"ess_fraction\": "), "{line}");
        assert!(importance_estimates(&[f64::NAN]).to_json_line().contains("\"elbo\": null"));
    }
}
