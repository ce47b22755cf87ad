//! Conditional flow matching (Lipman et al. 2023) with straight, optimal-transport paths: a
//! simulation-free objective for a CNF's vector field, one network call per step and no solver.
//!
//! In this crate's direction (data at `s = 0`, the standard-normal base at `s = 1`), a data
//! point `x` and a noise draw `ε` define the path `z_s = (1 − s)·x + (σ + (1 − σ)·s)·ε` with
//! the constant velocity `u = (1 − σ)·ε − x`, and the loss is
//! `E_{s ~ U(0,1), x, ε} ‖dz/ds(z_s, s) − u‖²`, where the CNF's `dz/ds = T·f(z, sT)`. Its
//! minimiser transports the data distribution (smoothed by `σ`) onto `N(0, I)`, so the trained
//! CNF's exact log-likelihood is still evaluated with the ODE and the trace.
use super::Cnf;
use crate::flows::{check_channels, Ctx};
use anyhow::Result;
use tch::Tensor;

/// Width of the data end of the paths (Lipman et al.'s `σ_min`).
pub const SIGMA_MIN: f64 = 1e-4;

/// The mean over the batch of `‖dz/ds − u‖²` (summed over features) for `x [B, D]` in the
/// CNF's input space, drawing `s` and `ε` from libtorch's generator. Counts one function
/// evaluation (`"nfe_forward"`).
pub fn flow_matching_loss(cnf: &Cnf, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    flow_matching_loss_with(cnf, x, ctx, SIGMA_MIN)
}

/// [`flow_matching_loss`] with a chosen `σ_min` in `[0, 1)`.
pub fn flow_matching_loss_with(cnf: &Cnf, x: &Tensor, ctx: &Ctx, sigma_min: f64) -> Result<Tensor> {
    anyhow::ensure!((0.0..1.0).contains(&sigma_min), "flow matching: sigma_min = {sigma_min} must be in [0, 1)");
    check_channels("flow matching", x, cnf.dim())?;
    anyhow::ensure!(x.dim() == 2, "flow matching: expected input of shape [B, {}], got {:?}", cnf.dim(), x.size());
    let b = x.size()[0];
    let cond = crate::flows::conditioner::context("flow matching", ctx, cnf.net.context_dim, b)?;
    let x = x.f_detach()?;
    let eps = x.f_randn_like()?;
    let s = Tensor::f_rand([b, 1], (x.kind(), x.device()))?;
    let z = x.f_mul(&s.f_neg()?.f_add_scalar(1.0)?)?.f_add(&eps.f_mul(&s.f_mul_scalar(1.0 - sigma_min)?.f_add_scalar(sigma_min)?)?)?;
    let target = eps.f_mul_scalar(1.0 - sigma_min)?.f_sub(&x)?;
    let end_time = cnf.end_time()?;
    let velocity = cnf.net.forward_per_row(&s.f_mul(&end_time)?, &z, cond)?.f_mul(&end_time)?;
    ctx.count("nfe_forward", 1.0);
    Ok(velocity.f_sub(&target)?.f_square()?.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?.f_mean(x.kind())?)
}
