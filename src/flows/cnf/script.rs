//! The continuous flow as TorchScript and plain PyTorch (one [`Layer`] description, both back
//! ends): the field and its trace, Dormand–Prince 5(4) with the same step control as
//! [`crate::flows::ode`] (Hairer's first step, FSAL, the same tableau, error norm, limits and
//! messages), and fixed-step RK4 and Euler.
//!
//! Methods of the layer (besides the flow contract `forward(x, cond)` / `inverse(y, cond)`,
//! which use the solver chosen at export, exact trace):
//! - `forward_ode(x, cond, solver, steps, hutchinson)` and `inverse_ode(y, cond, solver, steps)`:
//!   `solver` 0 = dopri5 (adaptive, the export's tolerances), 1 = rk4, 2 = euler (`steps` equal
//!   steps); `hutchinson` replaces the exact trace by Hutchinson's estimate with one probe per
//!   row drawn from PyTorch's generator (Rademacher or Gaussian as configured), fixed during
//!   the solve.
//!
//! The exact trace carries the `D` basis vectors through the net beside the values, as
//! [`super::jvp`] does (no autograd inside an evaluation, so it works under `torch.no_grad()`,
//! in `torch.export` and in `torch.compile`), all in one piece (the Rust layer may split it into
//! chunks; the sum is the same). The fixed-step path reads nothing back to the host, so
//! `torch.export` and `torch.compile(fullgraph=True)` take it; the adaptive one decides each
//! step from a host read of the error, a data-dependent loop that only eager PyTorch and
//! TorchScript run.
use super::net::{OdeActivation, OdeLayers};
use super::{Cnf, Noise};
use crate::flows::ode::dopri5::{A, C, E, MAX_FACTOR, MIN_FACTOR, SAFETY};
use crate::flows::ode::{ErrorNorm, Method};
use crate::script::{ts_float, Layer, ScriptBuilder, ScriptFlow};
use anyhow::Result;

/// The integer a solver goes by in the exported methods.
pub fn solver_code(method: Method) -> i64 {
    match method {
        Method::Dopri5 => 0,
        Method::Rk4 => 1,
        Method::Euler => 2,
    }
}

/// `u · σ'(a)` in TorchScript (`h = σ(a)`), as [`OdeActivation::scale_tangent`] computes it.
fn scale_tangent(act: OdeActivation, u: &str, a: &str, h: &str) -> String {
    match act {
        OdeActivation::Tanh => format!("{u} * (1.0 - {h} * {h})"),
        OdeActivation::Softplus => format!("{u} * torch.where({a} > 20.0, torch.ones_like({a}), torch.sigmoid({a}))"),
        OdeActivation::Elu => format!("{u} * torch.where({h} > 0.0, torch.ones_like({h}), {h} + 1.0)"),
    }
}

fn activation(act: OdeActivation, a: &str) -> String {
    match act {
        OdeActivation::Tanh => format!("torch.tanh({a})"),
        OdeActivation::Softplus => format!("torch.softplus({a})"),
        OdeActivation::Elu => format!("torch.elu({a})"),
    }
}

/// `y + (k1 * (c1 * dt) + k2 * (c2 * dt) + ...)`, zero coefficients left out, in the order of
/// the solver's `lincomb`.
fn lincomb(y: &str, terms: &[(f64, String)]) -> Result<String> {
    let parts: Vec<String> = terms
        .iter()
        .filter(|(c, _)| *c != 0.0)
        .map(|(c, k)| Ok(format!("{k} * ({} * dt)", ts_float(*c)?)))
        .collect::<Result<_>>()?;
    Ok(format!("{y} + ({})", parts.join(" + ")))
}

/// The body of `maps(s) -> List[Tensor]`: every layer's affine map at time `s·T`, the last one
/// scaled by `T` (as `Prepared::maps_at`), flattened `[w0, b0, w1, b1, ...]`.
fn maps_body(cnf: &Cnf) -> Result<String> {
    let mut body = "T = torch.square($sqrt_end_time)\nt = T * s\n".to_string();
    let mut out = vec![];
    match &cnf.net.layers {
        OdeLayers::ConcatSquash(layers) | OdeLayers::ConcatSquashConv { layers, .. } => {
            let n = layers.len();
            // The gate scales each output: a dense row or a conv filter.
            let per_output = if cnf.net.image_shape().is_some() { "reshape([-1, 1, 1, 1])" } else { "unsqueeze(1)" };
            for i in 0..n {
                body += &format!("g{i} = torch.sigmoid(torch.addcmul($gb{i}, $gw{i}, t))\nw{i} = $w{i} * g{i}.{per_output}\nb{i} = torch.addcmul($hb{i} * t, $b{i}, g{i})\n");
                if i + 1 == n {
                    body += &format!("w{i} = w{i} * T\nb{i} = b{i} * T\n");
                }
                out.push(format!("w{i}, b{i}"));
            }
        }
        OdeLayers::Mlp { linears, freqs } => {
            let n = linears.len();
            for i in 0..n {
                body += &if i + 1 == n { format!("w{i} = $w{i} * T\nb{i} = $b{i} * T\n") } else { format!("w{i} = $w{i}\nb{i} = $b{i}\n") };
                out.push(format!("w{i}, b{i}"));
            }
            let nt = 2 * freqs;
            body += &format!(
                "k = torch.arange(1, {}, dtype=t.dtype, device=t.device) * {}\na = t * k\nfeats = torch.cat([torch.cos(a), torch.sin(a)], -1)\nb0 = torch.addmv(b0, w0[:, :{nt}], feats)\nw0 = w0[:, {nt}:]\n",
                freqs + 1,
                ts_float(std::f64::consts::PI)?
            );
        }
    }
    Ok(body + &format!("return [{}]", out.join(", ")))
}

/// The body of `field(s, y, cond, eps) -> Tensor`: `[dz/ds, tr(∂(dz/ds)/∂z)]` for the packed
/// state `y = [z, log-det]`, the trace exact (`eps is None`) or Hutchinson's `εᵀJε`.
fn field_body(cnf: &Cnf) -> String {
    let act = cnf.net.activation;
    let n = match &cnf.net.layers {
        OdeLayers::ConcatSquash(l) => l.len(),
        OdeLayers::Mlp { linears, .. } => linears.len(),
        OdeLayers::ConcatSquashConv { layers, shape } => return conv_field_body(cnf, layers, *shape),
    };
    let mut body = "m = $self.maps(s)\nz = y[:, :$dim]\n".to_string();
    body += &if cnf.net.context_dim > 0 {
        format!("{CONTEXT_CHECK}c = cond\nh = torch.cat([z, c.to(z.dtype)], 1)\n")
    } else {
        "h = z\n".to_string()
    };
    for i in 0..n {
        let input = if i == 0 { "h".to_string() } else { format!("h{}", i - 1) };
        if i + 1 < n {
            body += &format!("a{i} = torch.linear({input}, m[{}], m[{}])\nh{i} = {}\n", 2 * i, 2 * i + 1, activation(act, &format!("a{i}")));
        } else {
            body += &format!("v = torch.linear({input}, m[{}], m[{}])\n", 2 * i, 2 * i + 1);
        }
    }
    body += "wz = m[0][:, :$dim]\nif eps is None:\n";
    if n == 1 {
        // A single affine layer: its Jacobian is the weight itself.
        body += "    tr = torch.sum(torch.diagonal(wz)).expand([z.size(0)])\n";
    } else {
        // The basis vectors after the first map, [D, 1, H]; the last layer's diagonal only.
        body += "    u = wz.t().unsqueeze(1)\n";
        for i in 0..n - 1 {
            body += &format!("    u = {}\n", scale_tangent(act, "u", &format!("a{i}"), &format!("h{i}")));
            body += &if i + 2 == n {
                format!("    tr = torch.sum(u * m[{}].unsqueeze(1), [0, 2])\n", 2 * (i + 1))
            } else {
                format!("    u = torch.linear(u, m[{}], None)\n", 2 * (i + 1))
            };
        }
    }
    body += "else:\n    e = eps\n    u = torch.linear(e, wz, None).unsqueeze(0)\n";
    for i in 0..n - 1 {
        body += &format!("    u = {}\n", scale_tangent(act, "u", &format!("a{i}"), &format!("h{i}")));
        body += &format!("    u = torch.linear(u, m[{}], None)\n", 2 * (i + 1));
    }
    body += "    tr = torch.sum(u.squeeze(0) * e, [1])\nreturn torch.cat([v, tr.unsqueeze(1)], 1)";
    body
}

const CONTEXT_CHECK: &str = "assert cond is not None, \"Cnf: this flow is conditional: pass a context\"\n";

/// [`field_body`] for a conv field (as [`super::conv`]): the image views of the flat state, 3×3
/// convs with padding 1, the exact trace from all `D` one-hot images at once.
fn conv_field_body(cnf: &Cnf, layers: &[super::net::ConcatSquash], [c, hh, ww]: [i64; 3]) -> String {
    let act = cnf.net.activation;
    let n = layers.len();
    let k = cnf.net.context_dim;
    let mut body = format!("m = $self.maps(s)\nz = y[:, :$dim]\nb = z.size(0)\nh = z.reshape([b, {c}, {hh}, {ww}])\n");
    if k > 0 {
        body += &format!("{CONTEXT_CHECK}c = cond\nh = torch.cat([h, c.to(z.dtype).reshape([b, {k}, 1, 1]).expand([b, {k}, {hh}, {ww}])], 1)\n");
    }
    for i in 0..n {
        let input = if i == 0 { "h".to_string() } else { format!("h{}", i - 1) };
        let conv = format!("torch.conv2d({input}, m[{}], m[{}], 1, 1)", 2 * i, 2 * i + 1);
        body += &if i + 1 < n { format!("a{i} = {conv}\nh{i} = {}\n", activation(act, &format!("a{i}"))) } else { format!("v = {conv}.reshape([b, $dim])\n") };
    }
    body += &format!(
        "wz = m[0][:, :{c}]\nif eps is None:\n    u = torch.conv2d(torch.eye($dim, dtype=z.dtype, device=z.device).reshape([$dim, {c}, {hh}, {ww}]), wz, None, 1, 1).unsqueeze(1)\n\
         else:\n    u = torch.conv2d(eps.reshape([b, {c}, {hh}, {ww}]), wz, None, 1, 1).unsqueeze(0)\n"
    );
    for i in 0..n - 1 {
        let width = layers[i].weight.size()[0];
        body += &format!("u = {}\nnt = u.size(0)\n", scale_tangent(act, "u", &format!("a{i}"), &format!("h{i}")));
        body += &format!("u = torch.conv2d(u.reshape([nt * b, {width}, {hh}, {ww}]), m[{}], None, 1, 1).reshape([nt, b, -1, {hh}, {ww}])\n", 2 * (i + 1));
    }
    body += &format!("u = u.expand([u.size(0), b, {c}, {hh}, {ww}]).reshape([u.size(0), b, $dim])\n");
    body += "if eps is None:\n    tr = torch.sum(torch.diagonal(u, 0, 0, 2), [1])\nelse:\n    tr = torch.sum(u.squeeze(0) * eps, [1])\nreturn torch.cat([v, tr.unsqueeze(1)], 1)";
    body
}

/// `error_norm(ratio) -> float`: the RMS or the maximum of the scaled error, infinite when it
/// is not finite (as the solver's `reduce` and `combine`). A host number: a constant to
/// autograd (the Rust solver computes it under no-grad).
fn error_norm_body(norm: ErrorNorm) -> String {
    match norm {
        ErrorNorm::Rms => "e = float(torch.sum(torch.square(ratio.detach()), dtype=7))\nif not e - e == 0.0:\n    return float(\"inf\")\nreturn (e / float(max(ratio.numel(), 1))) ** 0.5".into(),
        ErrorNorm::Max => "e = float(torch.max(torch.abs(ratio.detach())).to(dtype=7))\nif not e - e == 0.0:\n    return float(\"inf\")\nreturn max(e, 0.0)".into(),
    }
}

const INITIAL_STEP: &str = "scale = torch.abs(y0) * $rtol + $atol
d0 = $self.error_norm(y0 / scale)
d1 = $self.error_norm(f0 / scale)
if not d1 - d1 == 0.0:
    assert False, \"dopri5: the derivative at the initial state became non-finite (NaN or Inf) at t = \" + str(t0)
h0 = 1e-6
if d0 >= 1e-5 and d1 >= 1e-5:
    h0 = 0.01 * d0 / d1
y1 = y0 + f0 * (direction * h0)
f1 = $self.field(t0 + direction * h0, y1, cond, eps)
d2 = $self.error_norm((f1 - f0) / scale) / h0
big = max(d1, d2)
h1 = h0
if big - big == 0.0:
    if big <= 1e-15:
        h1 = max(h0 * 1e-3, 1e-6)
    else:
        h1 = (0.01 / big) ** 0.2
return max(min(100.0 * h0, h1), $min_step)";

/// The body of `dopri5(y0, s0, s1, cond, eps) -> Tensor`, step for step the Rust solver.
fn dopri5_body() -> Result<String> {
    let mut b = String::from(
        "direction = 1.0
if s1 < s0:
    direction = -1.0
span = abs(s1 - s0)
k1 = $self.field(s0, y0, cond, eps)
h = $first_step
if h <= 0.0:
    h = $self.initial_step(s0, y0, k1, direction, cond, eps)
h = min(h, span)
t = s0
y = y0
attempts = 0
accepted = 0
rejected = 0
nonfinite_trials = False
while direction * (s1 - t) > 0.0:
    if attempts >= $max_steps:
        assert False, \"dopri5: reached max_steps = \" + str($max_steps) + \" step attempts at t = \" + str(t) + \" (integrating from \" + str(s0) + \" to \" + str(s1) + \"; \" + str(accepted) + \" accepted, \" + str(rejected) + \" rejected): loosen rtol/atol, regularise the dynamics, or raise max_steps\"
    attempts += 1
    remaining = abs(s1 - t)
    last = h * 1.01 >= remaining
    dt = direction * h
    if last:
        dt = direction * remaining
",
    );
    let mut ks = vec!["k1".to_string()];
    for (i, (row, c)) in A.iter().zip(C).enumerate() {
        let terms: Vec<(f64, String)> = row.iter().zip(&ks).map(|(a, k)| (*a, k.clone())).collect();
        let stage = lincomb("y", &terms)?;
        let k = format!("k{}", i + 2);
        if i + 1 == A.len() {
            // The last row is the 5th-order solution; its stage is the next step's first.
            b += &format!("    y_next = {stage}\n    {k} = $self.field(t + {} * dt, y_next, cond, eps)\n", ts_float(c)?);
        } else {
            b += &format!("    {k} = $self.field(t + {} * dt, {stage}, cond, eps)\n", ts_float(c)?);
        }
        ks.push(k);
    }
    let err: Vec<String> = E.iter().zip(&ks).filter(|(e, _)| **e != 0.0).map(|(e, k)| Ok(format!("{k} * ({} * dt)", ts_float(*e)?))).collect::<Result<_>>()?;
    b += &format!(
        "    err = {}
    scale = torch.maximum(torch.abs(y), torch.abs(y_next)) * $rtol + $atol
    err_norm = $self.error_norm(err / scale)
    k1_sum = float(torch.sum(k1.detach(), dtype=7))
    step_ok = err_norm <= 1.0
    if not k1_sum - k1_sum == 0.0:
        assert False, \"dopri5: the derivative at the current state became non-finite (NaN or Inf) at t = \" + str(t)
    factor = {max}
    if not err_norm - err_norm == 0.0:
        nonfinite_trials = True
        factor = {min}
    elif err_norm > 0.0:
        factor = min(max({safety} * err_norm ** (-0.2), {min}), {max})
    step = abs(dt)
    if step_ok:
        accepted += 1
        if last:
            t = s1
        else:
            t = t + dt
        y = y_next
        k1 = k7
        nonfinite_trials = False
        h = step * factor
    else:
        rejected += 1
        h = step * min(factor, 1.0)
    if direction * (s1 - t) > 0.0 and h < $min_step:
        if nonfinite_trials:
            assert False, \"dopri5: the state of every trial step down to min_step became non-finite (NaN or Inf) at t = \" + str(t)
        assert False, \"dopri5: the step size \" + str(h) + \" fell below min_step = \" + str($min_step) + \" at t = \" + str(t) + \" (integrating from \" + str(s0) + \" to \" + str(s1) + \"): the dynamics are too stiff for rtol/atol, or diverging\"
return y",
        err.join(" + "),
        max = ts_float(MAX_FACTOR)?,
        min = ts_float(MIN_FACTOR)?,
        safety = ts_float(SAFETY)?,
    );
    Ok(b)
}

const FIXED: &str = "assert steps >= 1, \"Cnf: steps = \" + str(steps) + \" must be >= 1\"
dt = (s1 - s0) / steps
y = y0
for i in range(steps):
    t = s0 + i * dt
    k1 = $self.field(t, y, cond, eps)
    if rk4:
        k2 = $self.field(t + dt / 2.0, y + k1 * (dt / 2.0), cond, eps)
        k3 = $self.field(t + dt / 2.0, y + k2 * (dt / 2.0), cond, eps)
        k4 = $self.field(t + dt, y + k3 * dt, cond, eps)
        y = y + (k1 * (dt / 6.0) + k2 * (dt / 3.0) + k3 * (dt / 3.0) + k4 * (dt / 6.0))
    else:
        y = y + k1 * dt
return y";

impl Cnf {
    /// Describes the layer to `ts` (see the module docs).
    pub(super) fn script(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let solver = &self.options.eval_solver;
        let mut layer = Layer::new("Cnf")
            .int("dim", self.dim())
            .int("solver", solver_code(solver.method))
            .int("steps", solver.steps)
            .float("rtol", solver.rtol)
            .float("atol", solver.atol)
            .int("max_steps", solver.max_steps)
            .float("min_step", solver.min_step)
            .float("first_step", solver.first_step.unwrap_or(0.0))
            .bool("gaussian", self.options.noise == Noise::Gaussian)
            .tensor(ts, "sqrt_end_time", &self.sqrt_end_time)?;
        if self.net.context_dim > 0 {
            layer = layer.int("context_dim", self.net.context_dim);
        }
        match &self.net.layers {
            OdeLayers::ConcatSquash(layers) | OdeLayers::ConcatSquashConv { layers, .. } => {
                for (i, l) in layers.iter().enumerate() {
                    layer = layer
                        .tensor(ts, &format!("w{i}"), &l.weight)?
                        .tensor(ts, &format!("b{i}"), &l.bias)?
                        .tensor(ts, &format!("gw{i}"), &l.gate_weight)?
                        .tensor(ts, &format!("gb{i}"), &l.gate_bias)?
                        .tensor(ts, &format!("hb{i}"), &l.hyper_bias)?;
                }
            }
            OdeLayers::Mlp { linears, .. } => {
                for (i, (w, b)) in linears.iter().enumerate() {
                    layer = layer.tensor(ts, &format!("w{i}"), w)?.tensor(ts, &format!("b{i}"), b)?;
                }
            }
        }
        let context_check = if self.net.context_dim > 0 { crate::flows::conditioner::script_context("Cnf", "x") } else { String::new() };
        let solve = format!(
            "assert x.dim() == 2 and x.size(1) == $dim, \"Cnf: expected input of shape [B, \" + str($dim) + \"], got \" + str(x.size())\n{context_check}\
             eps: Optional[Tensor] = None\n\
             if hutchinson:\n    if $gaussian:\n        eps = torch.randn([x.size(0), $dim], dtype=x.dtype, device=x.device)\n    else:\n        eps = torch.randint(0, 2, [x.size(0), $dim], dtype=x.dtype, device=x.device) * 2.0 - 1.0\n\
             y0 = torch.cat([x, torch.zeros([x.size(0), 1], dtype=x.dtype, device=x.device)], 1)\n\
             if solver == 0:\n    y = $self.dopri5(y0, s0, s1, cond, eps)\n\
             elif solver == 1:\n    y = $self.fixed(y0, s0, s1, steps, True, cond, eps)\n\
             else:\n    assert solver == 2, \"Cnf: solver \" + str(solver) + \" is not 0 (dopri5), 1 (rk4) or 2 (euler)\"\n    y = $self.fixed(y0, s0, s1, steps, False, cond, eps)\n\
             return y[:, :$dim], y[:, $dim]"
        );
        let (opt, pair) = ("Optional[Tensor]", "Tuple[Tensor, Tensor]");
        let field_params = format!("s: float, y: Tensor, cond: {opt}, eps: {opt}");
        let layer = layer
            .method("maps", "s: float", "List[Tensor]", &maps_body(self)?)
            .method("field", &field_params, "Tensor", &field_body(self))
            .method("error_norm", "ratio: Tensor", "float", &error_norm_body(solver.norm))
            .method("initial_step", &format!("t0: float, y0: Tensor, f0: Tensor, direction: float, cond: {opt}, eps: {opt}"), "float", INITIAL_STEP)
            .method("dopri5", &format!("y0: Tensor, s0: float, s1: float, cond: {opt}, eps: {opt}"), "Tensor", &dopri5_body()?)
            .method("fixed", &format!("y0: Tensor, s0: float, s1: float, steps: int, rk4: bool, cond: {opt}, eps: {opt}"), "Tensor", FIXED)
            .method("solve", &format!("x: Tensor, cond: {opt}, s0: float, s1: float, solver: int, steps: int, hutchinson: bool"), pair, &solve)
            .flow_methods(
                "return $self.solve(x, cond, 0.0, 1.0, $solver, $steps, False)",
                "return $self.solve(y, cond, 1.0, 0.0, $solver, $steps, False)",
            )
            .method(
                "forward_ode",
                &format!("x: Tensor, cond: {opt}, solver: int, steps: int, hutchinson: bool"),
                pair,
                "return $self.solve(x, cond, 0.0, 1.0, solver, steps, hutchinson)",
            )
            .method("inverse_ode", &format!("y: Tensor, cond: {opt}, solver: int, steps: int"), pair, "return $self.solve(y, cond, 1.0, 0.0, solver, steps, False)");
        ts.add(layer)
    }
}
