//! FFJORD (Grathwohl et al. 2019) on vectors (2-D toys, the 64-d digits), composed from the zoo:
//! `[standardize] → blocks × (continuous flow → [norm]) → N(0, I)`, the tabular model of the
//! FFJORD repository (`train_toy.py` / `train_tabular.py`, whose optional batch norms sit after
//! each block), with the standardisation layer in front as for every tabular model here.
//!
//! Config: `model.blocks`, `model.norm` ("batchnorm" | "actnorm" | "none") and `[model.cnf]`
//! ([`crate::config::CnfConfig`]: the ODE net, the end time, the training and evaluation
//! solvers, the trace and the RNODE weights).
//!
//! Parameter names: `standardize.{mean,std}`, `blocks.{b}.cnf.net.{i}.{linear,gate,hyper_bias}.*`
//! (`gate`, `hyper_bias` for concat-squash layers only),
//! `blocks.{b}.cnf.sqrt_end_time`, `blocks.{b}.norm.*`.
use super::realnvp::VectorSpec;
use super::DensityModel;
use crate::config::{Config, NormChoice};
use crate::flows::cnf::flow_matching_loss;
use crate::flows::{ActNorm, ActNormParam, Base, BatchNormFlow, Cnf, Ctx, ElementwiseAffine, Flow, LayerType, OdeNet, StandardNormal};
use crate::script::{ts_zero_logdet, Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Context, Result};
use tch::{nn, Tensor};

/// The transform: the standardisation, then each block's CNF and its normalisation.
pub struct FfjordFlow {
    pub standardize: Option<ElementwiseAffine>,
    pub cnfs: Vec<Cnf>,
    pub norms: Vec<Option<Box<dyn Flow>>>,
}

impl FfjordFlow {
    /// TorchScript of the chain (`forward`, `inverse` as the flow contract; `forward_ode` and
    /// `inverse_ode` pass the solver, steps and trace choice to every block's continuous flow).
    fn script(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let mut layer = Layer::new("FfjordFlow");
        if let Some(s) = &self.standardize {
            layer = layer.child("standardize", &s.to_torchscript(ts)?);
        }
        let (mut f, mut f_ode) = (format!("h = x\ntotal = {}\n", ts_zero_logdet("x")), format!("h = x\ntotal = {}\n", ts_zero_logdet("x")));
        if self.standardize.is_some() {
            let line = "h, ld = $standardize.forward(h, cond)\ntotal = total + ld\n";
            f += line;
            f_ode += line;
        }
        let (mut i, mut i_ode) = (format!("h = y\ntotal = {}\n", ts_zero_logdet("y")), format!("h = y\ntotal = {}\n", ts_zero_logdet("y")));
        let mut inverse_lines = vec![];
        for (b, (cnf, norm)) in self.cnfs.iter().zip(&self.norms).enumerate() {
            layer = layer.child(&format!("cnf{b}"), &cnf.to_torchscript(ts).with_context(|| format!("block {b}'s continuous flow"))?);
            f += &format!("h, ld = $cnf{b}.forward(h, cond)\ntotal = total + ld\n");
            f_ode += &format!("h, ld = $cnf{b}.forward_ode(h, cond, solver, steps, hutchinson)\ntotal = total + ld\n");
            let mut inv = (format!("h, ld = $cnf{b}.inverse(h, cond)\ntotal = total + ld\n"), format!("h, ld = $cnf{b}.inverse_ode(h, cond, solver, steps)\ntotal = total + ld\n"));
            if let Some(n) = norm {
                layer = layer.child(&format!("norm{b}"), &n.to_torchscript(ts).with_context(|| format!("block {b}'s normalisation"))?);
                let line = format!("h, ld = $norm{b}.forward(h, cond)\ntotal = total + ld\n");
                f += &line;
                f_ode += &line;
                let back = format!("h, ld = $norm{b}.inverse(h, cond)\ntotal = total + ld\n");
                inv = (back.clone() + &inv.0, back + &inv.1);
            }
            inverse_lines.push(inv);
        }
        for (a, b) in inverse_lines.iter().rev() {
            i += a;
            i_ode += b;
        }
        if self.standardize.is_some() {
            let line = "h, ld = $standardize.inverse(h, cond)\ntotal = total + ld\n";
            i += line;
            i_ode += line;
        }
        let ret = "return h, total";
        let (opt, pair) = ("Optional[Tensor]", "Tuple[Tensor, Tensor]");
        ts.add(
            layer
                .flow_methods(&(f + ret), &(i + ret))
                .method("forward_ode", &format!("x: Tensor, cond: {opt}, solver: int, steps: int, hutchinson: bool"), pair, &(f_ode + ret))
                .method("inverse_ode", &format!("y: Tensor, cond: {opt}, solver: int, steps: int"), pair, &(i_ode + ret)),
        )
    }
}

impl Flow for FfjordFlow {
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        self.script(ts)
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let (mut h, mut total) = match &self.standardize {
            Some(s) => s.forward(x, ctx)?,
            None => (x.shallow_clone(), Tensor::f_zeros([x.size()[0]], (x.kind(), x.device()))?),
        };
        for (cnf, norm) in self.cnfs.iter().zip(&self.norms) {
            let (y, ld) = cnf.forward(&h, ctx)?;
            total = total.f_add(&ld)?;
            h = y;
            if let Some(n) = norm {
                let (y, ld) = n.forward(&h, ctx)?;
                total = total.f_add(&ld)?;
                h = y;
            }
        }
        Ok((h, total))
    }

    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let mut h = y.shallow_clone();
        let mut total = Tensor::f_zeros([y.size()[0]], (y.kind(), y.device()))?;
        for (cnf, norm) in self.cnfs.iter().zip(&self.norms).rev() {
            if let Some(n) = norm {
                let (x, ld) = n.inverse(&h, ctx)?;
                total = total.f_add(&ld)?;
                h = x;
            }
            let (x, ld) = cnf.inverse(&h, ctx)?;
            total = total.f_add(&ld)?;
            h = x;
        }
        if let Some(s) = &self.standardize {
            let (x, ld) = s.inverse(&h, ctx)?;
            total = total.f_add(&ld)?;
            h = x;
        }
        Ok((h, total))
    }
}

/// A solver's settings for a model's description.
pub(super) fn solver_text(s: &crate::flows::ode::SolverOptions) -> String {
    match s.method {
        crate::flows::ode::Method::Dopri5 => format!("dopri5 rtol {:e} atol {:e}", s.rtol, s.atol),
        other => format!("{} {} steps", other.name(), s.steps),
    }
}

pub struct Ffjord {
    pub flow: FfjordFlow,
    pub base: StandardNormal,
    pub dim: i64,
    pub desc: String,
    /// Classes of a label-conditional model (`data.label_column`).
    pub n_classes: Option<i64>,
}

impl Ffjord {
    pub fn build(root: nn::Path, cfg: &Config, spec: &VectorSpec) -> Result<Ffjord> {
        let m = &cfg.model;
        let c = &m.cnf;
        let d = spec.dim;
        if d < 1 {
            bail!("FFJORD needs at least 1 dimension, the data has {d}");
        }
        c.validate()?;
        let standardize = spec.standardize.then(|| {
            let zeros = Tensor::zeros([d], (tch::Kind::Float, tch::Device::Cpu));
            ElementwiseAffine::standardize(&root / "standardize", &zeros, &zeros.ones_like())
        });
        let options = c.options();
        let mut cnfs = vec![];
        let mut norms: Vec<Option<Box<dyn Flow>>> = vec![];
        for b in 0..m.blocks {
            let p = &root / "blocks" / b;
            let net = OdeNet::with_layers(&p / "cnf" / "net", c.layer_type, c.time_frequencies, d, spec.context_dim, &c.hidden, c.activation)?;
            cnfs.push(Cnf::with_net(&p / "cnf", net, c.time_length, c.train_time, options.clone())?);
            norms.push(match m.norm {
                NormChoice::Batchnorm => Some(Box::new(BatchNormFlow::new(&p / "norm", d, 2))),
                NormChoice::Actnorm => Some(Box::new(ActNorm::new(&p / "norm", d, 2, ActNormParam::Log))),
                NormChoice::None => None,
            });
        }
        let solver = solver_text;
        let desc = format!(
            "FFJORD: {d} dims, {} blocks of CNF ({} {:?}, {:?}), T = {}{}, train {}, eval {}, trace {:?} ({:?} noise), kinetic {} jacobian {}, norm {:?}, standardize {}{}",
            m.blocks,
            match c.layer_type {
                LayerType::ConcatSquash => "concat-squash".to_string(),
                LayerType::Mlp => format!("MLP with {} time frequencies", c.time_frequencies),
            },
            c.hidden,
            c.activation,
            c.time_length,
            if c.train_time { " (learned)" } else { "" },
            solver(&options.train_solver),
            solver(&options.eval_solver),
            c.trace,
            c.noise,
            c.kinetic_weight,
            c.jacobian_weight,
            m.norm,
            spec.standardize,
            super::realnvp::context_note(spec)
        );
        Ok(Ffjord { flow: FfjordFlow { standardize, cnfs, norms }, base: StandardNormal, dim: d, desc, n_classes: None })
    }
}

impl DensityModel for Ffjord {
    fn flow(&self) -> &dyn Flow {
        &self.flow
    }
    fn base(&self) -> &dyn Base {
        &self.base
    }
    fn event_shape(&self) -> Vec<i64> {
        vec![self.dim]
    }
    fn n_classes(&self) -> Option<i64> {
        self.n_classes
    }
    fn describe(&self) -> String {
        self.desc.clone()
    }

    /// Conditional flow matching ([`flow_matching_loss`]) for a model of one block without a
    /// normalisation layer: `x` (data units) goes through the fixed standardisation, and the
    /// block's field is trained to carry it straight onto `N(0, I)`.
    fn flow_matching_loss(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.check_input(x)?;
        if self.flow.cnfs.len() != 1 || self.flow.norms[0].is_some() {
            bail!("flow matching trains one vector field from the data to the base: use model.blocks = 1 and model.norm = \"none\" (this model has {} blocks, norm {})", self.flow.cnfs.len(), if self.flow.norms[0].is_some() { "on" } else { "off" });
        }
        let z = match &self.flow.standardize {
            Some(s) => s.forward(x, ctx)?.0,
            None => x.shallow_clone(),
        };
        flow_matching_loss(&self.flow.cnfs[0], &z, ctx)
    }
}
