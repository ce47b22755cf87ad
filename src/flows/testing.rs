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

/// A var store's variables in name order. `VarStore::variables()` is a HashMap, whose order
/// changes from run to run: a seeded test that draws noise per variable in that order gets
/// other weights each run.
pub fn sorted_variables(vs: &tch::nn::VarStore) -> Vec<(String, tch::Tensor)> {
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Moves every parameter away from its (often zero) initial value, so that tests exercise
/// all the arithmetic instead of identities.
pub fn perturb(vs: &tch::nn::VarStore, scale: f64) {
    let _g = tch::no_grad_guard();
    for (_name, mut t) in sorted_variables(vs) {
        if t.requires_grad() {
            let noise = t.randn_like() * scale;
            let _ = t.f_add_(&noise);
        }
    }
}

/// A test layer for the parts of the contract that continuous flows use: `y = x · exp(s)` per
/// feature (`s = log_scale`, `[D]`). With `ctx.stochastic_logdet` it returns an unbiased
/// one-feature estimate of its log-det (`D · s_j` for a uniformly drawn `j` per sample, as a
/// Hutchinson trace is an unbiased estimate of a continuous flow's), and on every call it
/// reports a penalty `"kinetic"` (`mean_b ‖y − x‖²`, like a kinetic-energy regulariser) and
/// one `"nfe"` (a function evaluation) to `ctx.sink`.
pub struct NoisyScale {
    pub log_scale: Tensor,
}

impl NoisyScale {
    pub fn new(p: tch::nn::Path, dim: i64) -> Self {
        NoisyScale { log_scale: p.zeros("log_scale", &[dim]) }
    }

    fn logdet(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (b, d) = (x.size()[0], self.log_scale.size()[0]);
        if ctx.stochastic_logdet {
            let j = Tensor::f_randint(d, [b], (Kind::Int64, x.device()))?;
            return Ok(self.log_scale.f_index_select(0, &j)?.f_mul_scalar(d as f64)?.f_to_kind(x.kind())?);
        }
        Ok(self.log_scale.f_sum(x.kind())?.f_expand([b], false)?)
    }
}

impl Flow for NoisyScale {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        super::check_channels("NoisyScale", x, self.log_scale.size()[0])?;
        let y = x.f_mul(&self.log_scale.f_exp()?)?;
        ctx.add_penalty("kinetic", y.f_sub(x)?.f_square()?.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?);
        ctx.count("nfe", 1.0);
        let ld = self.logdet(x, ctx)?;
        Ok((y, ld))
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        super::check_channels("NoisyScale", y, self.log_scale.size()[0])?;
        ctx.count("nfe", 1.0);
        let x = y.f_mul(&self.log_scale.f_neg()?.f_exp()?)?;
        Ok((x, self.logdet(y, ctx)?.f_neg()?))
    }
}

/// A base distribution seen as the flow `z -> ε` onto its standard-normal noise, so the
/// checks above (and the TorchScript comparisons) apply to bases too.
pub struct BaseFlow<B: super::Base>(pub B);

impl<B: super::Base> Flow for BaseFlow<B> {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.0.to_noise(x, ctx)
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.0.from_noise(y, ctx)
    }
    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        self.0.to_torchscript(ts)
    }
}
