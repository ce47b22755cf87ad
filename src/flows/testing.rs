//! Checks every layer must pass: inverse(forward(x)) == x, and the reported log-det equals
//! log|det J| computed by brute force from autograd. Public so that integration tests and
//! users' own layers can use them.
use super::{Ctx, Flow};
use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// `log|det dy/dx|` per sample from the full Jacobian, one backward pass per output value.
/// Only for tiny inputs: the cost is `D` backward passes.
pub fn brute_force_logdet(flow: &dyn Flow, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    let b = x.size()[0];
    let xg = x.detach().set_requires_grad(true);
    let (y, _) = flow.forward(&xg, ctx)?;
    let y = y.f_reshape([b, -1])?;
    let d_in = x.numel() as i64 / b;
    let d_out = y.size()[1];
    ensure!(d_in == d_out, "brute_force_logdet: input has {d_in} values per sample, output {d_out}");
    let mut rows = Vec::with_capacity(d_out as usize);
    for j in 0..d_out {
        let yj = y.f_select(1, j)?.f_sum(y.kind())?;
        let g = Tensor::f_run_backward(&[yj], &[&xg], true, false)?;
        rows.push(g[0].f_reshape([b, d_in])?);
    }
    let jac = Tensor::f_stack(&rows, 1)?; // [B, D_out, D_in]
    let (_sign, logabs) = Tensor::f_linalg_slogdet(&jac.f_to_kind(Kind::Double)?)?;
    Ok(logabs)
}

/// Largest errors of a flow on `x`: `(|inverse(forward(x)) - x|, |logdet - brute force|,
/// |forward logdet + inverse logdet|)`.
pub struct FlowCheck {
    pub inverse_err: f64,
    pub logdet_err: f64,
    pub inverse_logdet_err: f64,
}

pub fn check_flow(flow: &dyn Flow, x: &Tensor, ctx: &Ctx) -> Result<FlowCheck> {
    let (y, ld) = flow.forward(x, ctx)?;
    let (x2, ld_inv) = flow.inverse(&y, ctx)?;
    ensure!(ld.size() == [x.size()[0]], "log-det must be [B], got {:?}", ld.size());
    let inverse_err = x2.f_sub(x)?.f_abs()?.f_max()?.double_value(&[]);
    let inverse_logdet_err = ld.f_add(&ld_inv)?.f_abs()?.f_max()?.double_value(&[]);
    let brute = brute_force_logdet(flow, x, ctx)?;
    let logdet_err = ld.f_to_kind(Kind::Double)?.f_sub(&brute)?.f_abs()?.f_max()?.double_value(&[]);
    Ok(FlowCheck { inverse_err, logdet_err, inverse_logdet_err })
}

/// Moves every parameter away from its (often zero) initial value, so that tests exercise
/// all the arithmetic instead of identities.
pub fn perturb(vs: &tch::nn::VarStore, scale: f64) {
    let _g = tch::no_grad_guard();
    for (_name, mut t) in vs.variables() {
        if t.requires_grad() {
            let noise = t.randn_like() * scale;
            let _ = t.f_add_(&noise);
        }
    }
}
