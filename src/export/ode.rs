//! The exported module of a model that integrates ODEs (FFJORD): its solver chosen at export
//! (`flowzoo export --ode-solver NAME --ode-steps N`), and the model-level methods that choose
//! the solver, the steps and the trace per call:
//!
//! * `forward_ode(x, labels=None, solver="<export's>", steps=<export's>, trace="exact")
//!   -> (z, logabsdet)`, `trace` "exact" or "hutchinson" (one probe per row from PyTorch's
//!   generator, an unbiased estimate of the log-det);
//! * `log_prob_ode(x, labels=None, solver=..., steps=..., trace="exact") -> [B]`;
//! * `inverse_ode(z, labels=None, solver=..., steps=...) -> x`;
//! * `sample_ode(n, temperature=1.0, labels=None, solver=..., steps=...) -> x`.
//!
//! `solver` is "dopri5" (adaptive, the run's `model.cnf.eval_rtol` / `eval_atol`, `max_steps`,
//! `min_step`, `error_norm`), "rk4" or "euler" (`steps` equal steps). The plain `forward`,
//! `log_prob`, `inverse` and `sample` use the export's solver with the exact trace.
use super::ExportOptions;
use crate::config::ModelKind;
use crate::flows::ode::Method;
use crate::io::RunDir;
use crate::script::{ts_float, Layer, ScriptFlow};
use anyhow::{bail, Result};

/// `--set`-style overrides that make the run's evaluation solver the one `--ode-solver` /
/// `--ode-steps` ask for (so the module's default, its check against the Rust model and the
/// reference outputs all use it); none without the flags.
pub(super) fn solver_overrides(run: &RunDir, opts: &ExportOptions) -> Result<Vec<String>> {
    if opts.ode_solver.is_none() && opts.ode_steps.is_none() {
        return Ok(vec![]);
    }
    let cfg = run.load_config()?;
    if cfg.model.kind != ModelKind::Ffjord {
        bail!("--ode-solver / --ode-steps: only a model that integrates an ODE has a solver (model.kind = \"ffjord\"); this run is model.kind = \"{}\"", cfg.model.kind);
    }
    let mut sets = vec![];
    if let Some(name) = &opts.ode_solver {
        let known = [Method::Dopri5, Method::Rk4, Method::Euler];
        if !known.iter().any(|m| m.name() == name) {
            bail!("--ode-solver {name:?}: known solvers are dopri5, rk4, euler");
        }
        sets.push(format!("model.cnf.eval_solver=\"{name}\""));
    }
    if let Some(steps) = opts.ode_steps {
        if !(1..=100_000).contains(&steps) {
            bail!("--ode-steps {steps}: must be between 1 and 100000");
        }
        sets.push(format!("model.cnf.eval_steps={steps}"));
    }
    Ok(sets)
}

/// Adds the `*_ode` methods (module docs) to the model's root layer. `shape_test` and `want`
/// check an input as the generic `forward` does.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_ode_methods(
    root: Layer,
    transform: &ScriptFlow,
    base: &ScriptFlow,
    shape_test: &str,
    want: &str,
    cls: &str,
    dim: i64,
    solver: &str,
    steps: i64,
) -> Result<Layer> {
    if transform.method("forward_ode").is_err() {
        bail!("{cls}: the transform has no forward_ode method (internal error: an ODE model whose flow does not export its solver choice)");
    }
    let normal_const = ts_float(0.5 * dim as f64 * (2.0 * std::f64::consts::PI).ln())?;
    let opt = "labels: Optional[Tensor]=None";
    let choice = format!("solver: str=\"{solver}\", steps: int={steps}");
    let code = format!(
        "if solver == \"dopri5\":\n    return 0\nif solver == \"rk4\":\n    return 1\n\
         assert solver == \"euler\", \"flowzoo {cls}: solver must be \\\"dopri5\\\", \\\"rk4\\\" or \\\"euler\\\", got \" + solver\nreturn 2"
    );
    let forward = format!(
        "assert {shape_test}, \"flowzoo {cls}: expected x of shape {want}, got \" + str(x.size())\n\
         assert trace == \"exact\" or trace == \"hutchinson\", \"flowzoo {cls}: trace must be \\\"exact\\\" or \\\"hutchinson\\\", got \" + trace\n\
         cond = $self._labels_to_cond(labels, x)\n\
         z, ld = $transform.forward_ode(x, cond, $self._solver_code(solver), steps, trace == \"hutchinson\")\n\
         eps, ld_base = $base.forward(z, cond)\nreturn eps, ld + ld_base"
    );
    let inverse = format!(
        "assert z.dim() == 2 and z.size(1) == {dim}, \"flowzoo {cls}: expected z of shape [B, {dim}], got \" + str(z.size())\n\
         cond = $self._labels_to_cond(labels, z)\n\
         h, ld_base = $base.inverse(z, cond)\n\
         x, ld = $transform.inverse_ode(h, cond, $self._solver_code(solver), steps)\nreturn x"
    );
    Ok(root
        .child("transform", transform)
        .child("base", base)
        .method("_solver_code", "solver: str", "int", &code)
        .method("forward_ode", &format!("x: Tensor, {opt}, {choice}, trace: str=\"exact\""), "Tuple[Tensor, Tensor]", &forward)
        .method(
            "log_prob_ode",
            &format!("x: Tensor, {opt}, {choice}, trace: str=\"exact\""),
            "Tensor",
            &format!("z, logabsdet = $self.forward_ode(x, labels, solver, steps, trace)\nb = z.size(0)\nsq = torch.sum(z.reshape([b, -1]).square(), [1])\nreturn (sq * (-0.5) - {normal_const}) + logabsdet"),
        )
        .method("inverse_ode", &format!("z: Tensor, {opt}, {choice}"), "Tensor", &inverse)
        .method(
            "sample_ode",
            &format!("n: int, temperature: float=1.0, {opt}, {choice}"),
            "Tensor",
            &format!("ref = $ref\neps = torch.randn([n, {dim}], dtype=ref.dtype, device=ref.device) * temperature\nreturn $self.inverse_ode(eps, labels, solver, steps)"),
        ))
}
