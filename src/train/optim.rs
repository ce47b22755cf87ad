//! Adam whose state (moments, step count) we own, so a checkpoint can save and restore it
//! exactly: tch's `nn::Adam` cannot export its state.
//!
//! Speed: the moments live in one flat buffer per (dtype, device) group, and so do a gradient
//! and a scratch buffer, so an update is 7 whole-buffer ops (`lerp_` for both moments) instead
//! of ~8 small ops per parameter (a Glow has hundreds of small parameters: the per-op overhead
//! dominated). The arithmetic per element is the same sequence of IEEE operations as the
//! per-tensor form (kept below for parameters that have no gradient), so results are
//! bit-for-bit those of the per-tensor code.
//!
//! Two more things make the update one pass per op over each buffer:
//! - **Linked buffers.** The parameters are re-pointed (`set_data`) at views of a flat
//!   parameter buffer, and after the first gather each gradient (`.grad`) is a view of the flat
//!   gradient buffer, into which autograd accumulates in place. The per-parameter gather, zeroing
//!   and final `addcdiv_` (2 × 230 ops on a Glow, ~1 ms of a MAF step on 575k weights) become
//!   one op each. Whoever re-points a parameter or its gradient afterwards (DDP's bucket views,
//!   a `set_data`) is noticed by pointer before every use, and that parameter goes back to the
//!   copying path: never a stale value. `set_data` leaves each parameter its own version
//!   counter, so the flat update bumps them by hand (the invertible convs' cached weights and
//!   autograd's in-place checks key on them).
//! - **No zero square roots.** libtorch's float `sqrt` is MKL's VML, which sends zeros and
//!   subnormals down a slow scalar path: a MADE's masked weights have `v = 0` for ever, and
//!   on the digits MAF half the entries made `sqrt` 5× slower than on normal numbers. `v` is
//!   clamped below at the smallest normal number first, which leaves every update bit-for-bit
//!   unchanged: there `√v/√bc2` is below `eps · 2⁻²⁶` and the sum with `eps` rounds to `eps`
//!   either way ([`Adam::clamp_floor`] checks that this holds before using it).
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Parameters sharing a dtype and device, with flat buffers and per-parameter views of them.
struct Group {
    /// Indices into `Adam::params`.
    idx: Vec<usize>,
    /// Flat `[n]` buffers: parameters (when `flat_params`), first and second moments, gathered
    /// gradient, scratch.
    p: Tensor,
    m: Tensor,
    v: Tensor,
    g: Tensor,
    t: Tensor,
    /// Per-parameter views (parameter shape) of `g` and `t`.
    g_views: Vec<Tensor>,
    t_views: Vec<Tensor>,
    /// Where each parameter's data starts when it is a view of `p` (`None`: it kept its own
    /// storage), and where its view of `g` starts.
    p_ptrs: Vec<Option<usize>>,
    g_ptrs: Vec<usize>,
    /// Whether the gradient of each parameter was pointed at its view of `g` (once: if someone
    /// re-points it later, we copy instead of fighting over it).
    linked: Vec<bool>,
}

impl Group {
    /// Whether every parameter is still its view of the flat parameter buffer.
    fn params_are_flat(&self, params: &[(String, Tensor)]) -> bool {
        self.idx.iter().zip(&self.p_ptrs).all(|(&i, ptr)| *ptr == Some(params[i].1.data_ptr() as usize))
    }

    /// Whether every gradient is (still) its view of the flat gradient buffer.
    fn grads_are_flat(&self, params: &[(String, Tensor)]) -> bool {
        self.idx.iter().zip(&self.g_ptrs).all(|(&i, &ptr)| {
            let g = params[i].1.grad();
            g.defined() && g.data_ptr() as usize == ptr
        })
    }
}

pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates applied so far.
    pub step: i64,
    params: Vec<(String, Tensor)>,
    /// Per-parameter views of the groups' flat moments (parameter shape).
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    groups: Vec<Group>,
    /// Whether every group's flat gradient holds the current gradients (set by `grad_norm`,
    /// cleared by `zero_grad`), so `step` need not copy them again.
    gathered: bool,
}

/// `numel`-sized views of `flat` in the shapes of `shapes`, in order.
fn views_of(flat: &Tensor, shapes: &[Vec<i64>]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(shapes.len());
    let mut off = 0;
    for s in shapes {
        let n: i64 = s.iter().product();
        out.push(flat.f_narrow(0, off, n)?.f_view(s.as_slice())?);
        off += n;
    }
    Ok(out)
}

/// Re-points each parameter of a group at its view of a new flat buffer holding its values;
/// returns the buffer and where each parameter now starts. A group with a non-contiguous or
/// empty parameter, or with two parameters on one storage (tied weights), is left alone.
fn flatten_params(params: &mut [(String, Tensor)], idx: &[usize], shapes: &[Vec<i64>], total: i64) -> Result<(Tensor, Vec<Option<usize>>)> {
    let opts = (params[idx[0]].1.kind(), params[idx[0]].1.device());
    let mut ptrs: Vec<usize> = idx.iter().map(|&i| params[i].1.data_ptr() as usize).collect();
    ptrs.sort_unstable();
    ptrs.dedup();
    let plain = ptrs.len() == idx.len() && idx.iter().all(|&i| params[i].1.is_contiguous() && params[i].1.numel() > 0);
    if !plain {
        return Ok((Tensor::f_empty([0], opts)?, vec![None; idx.len()]));
    }
    let _g = tch::no_grad_guard();
    let flat = Tensor::f_empty([total], opts)?;
    let mut out = Vec::with_capacity(idx.len());
    for (&i, view) in idx.iter().zip(views_of(&flat, shapes)?) {
        view.shallow_clone().f_copy_(&params[i].1)?;
        params[i].1.f_set_data(&view)?;
        out.push(Some(view.data_ptr() as usize));
    }
    Ok((flat, out))
}

impl Adam {
    /// `params`: the trainable variables, by name. Their data moves into one flat buffer per
    /// dtype and device (the values and every other handle on them are unchanged).
    pub fn new(mut params: Vec<(String, Tensor)>) -> Result<Self> {
        let n = params.len();
        let mut m: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let mut v: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        // Group by (kind, device), keeping the parameter order within a group.
        let mut keys: Vec<(Kind, Device)> = vec![];
        for (_, p) in &params {
            let k = (p.kind(), p.device());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut groups = vec![];
        for (kind, device) in keys {
            let idx: Vec<usize> = (0..n).filter(|&i| params[i].1.kind() == kind && params[i].1.device() == device).collect();
            let shapes: Vec<Vec<i64>> = idx.iter().map(|&i| params[i].1.size()).collect();
            let total: i64 = shapes.iter().map(|s| s.iter().product::<i64>()).sum();
            let opts = (kind, device);
            let (gm, gv) = (Tensor::f_zeros([total], opts)?, Tensor::f_zeros([total], opts)?);
            let (gg, gt) = (Tensor::f_zeros([total], opts)?, Tensor::f_zeros([total], opts)?);
            for ((&i, mv), vv) in idx.iter().zip(views_of(&gm, &shapes)?).zip(views_of(&gv, &shapes)?) {
                m[i] = Some(mv);
                v[i] = Some(vv);
            }
            let (gp, p_ptrs) = flatten_params(&mut params, &idx, &shapes, total)?;
            let g_views = views_of(&gg, &shapes)?;
            let t_views = views_of(&gt, &shapes)?;
            let g_ptrs = g_views.iter().map(|t| t.data_ptr() as usize).collect();
            let linked = vec![false; idx.len()];
            groups.push(Group { idx, p: gp, m: gm, v: gv, g: gg, t: gt, g_views, t_views, p_ptrs, g_ptrs, linked });
        }
        let m = m.into_iter().map(|t| t.expect("every parameter is in a group")).collect();
        let v = v.into_iter().map(|t| t.expect("every parameter is in a group")).collect();
        Ok(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 0, params, m, v, groups, gathered: false })
    }

    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        self.gathered = false;
        for group in &self.groups {
            if group.grads_are_flat(&self.params) {
                let _ = group.g.shallow_clone().f_zero_();
                continue;
            }
            for &i in &group.idx {
                let mut g = self.params[i].1.grad();
                if g.defined() {
                    let _ = g.f_zero_();
                }
            }
        }
    }

    /// Brings every gradient of `group` into its flat buffer (a copy only where the gradient is
    /// not already its view of it; the first copy also links it); false when one is undefined.
    fn gather(params: &[(String, Tensor)], group: &mut Group) -> Result<bool> {
        let _g = tch::no_grad_guard();
        for (k, (view, &i)) in group.g_views.iter().zip(&group.idx).enumerate() {
            let (p, g) = (&params[i].1, params[i].1.grad());
            if !g.defined() {
                return Ok(false);
            }
            if g.data_ptr() as usize == group.g_ptrs[k] {
                continue;
            }
            view.shallow_clone().f_copy_(&g)?;
            if !group.linked[k] {
                crate::ffi::switches::set_grad(p, view)?;
                group.linked[k] = true;
            }
        }
        Ok(true)
    }

    /// Global L2 norm of all gradients, as a 0-dim tensor (no host sync). The gradients must
    /// not change between this and `step` (which reuses the copy made here).
    pub fn grad_norm(&mut self) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let mut total: Option<Tensor> = None;
        let device = self.groups.first().map(|g| g.g.device());
        let mut add = |sq: Tensor| -> Result<()> {
            let sq = sq.f_to_device(device.expect("a gradient implies a group"))?;
            total = Some(match total.take() {
                Some(t) => t.f_add(&sq)?,
                None => sq,
            });
            Ok(())
        };
        let mut all = true;
        for group in &mut self.groups {
            if Self::gather(&self.params, group)? {
                add(group.g.f_dot(&group.g)?.f_to_kind(Kind::Float)?)?;
            } else {
                all = false;
                for &i in &group.idx {
                    let g = self.params[i].1.grad();
                    if g.defined() {
                        add(g.f_square()?.f_sum(Kind::Float)?)?;
                    }
                }
            }
        }
        self.gathered = all;
        match total {
            Some(t) => Ok(t.f_sqrt()?),
            None => bail!("no gradients: call backward() before the optimizer step"),
        }
    }

    /// The lower bound for `v` before its square root at this step, where clamping cannot
    /// change any update (see the module doc): `None` when that cannot be guaranteed (an `eps`
    /// too small, a dtype without a known smallest normal number).
    fn clamp_floor(&self, kind: Kind, bc2: f64) -> Option<f64> {
        let tiny = match kind {
            Kind::Float => f32::MIN_POSITIVE as f64,
            Kind::Double => f64::MIN_POSITIVE,
            _ => return None,
        };
        (tiny.sqrt() / bc2.sqrt() < self.eps * 2f64.powi(-26)).then_some(tiny)
    }

    /// One Adam update with learning rate `lr`, the gradients first scaled by `grad_scale`
    /// (gradient clipping).
    pub fn step(&mut self, lr: f64, grad_scale: f64) -> Result<()> {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2 = 1.0 - self.beta2.powf(t);
        let gathered = std::mem::take(&mut self.gathered);
        for gi in 0..self.groups.len() {
            if !gathered && !Self::gather(&self.params, &mut self.groups[gi])? {
                // Some parameter has no gradient: it is skipped, as the per-tensor form does.
                let idx = self.groups[gi].idx.clone();
                for i in idx {
                    self.step_one(i, lr, grad_scale, bc1, bc2)?;
                }
                continue;
            }
            let floor = self.clamp_floor(self.groups[gi].g.kind(), bc2);
            let group = &mut self.groups[gi];
            // The operations of `step_one`, in the same order, written into our own buffers
            // (no allocation: multi-megabyte temporaries cost page faults every step). Fused ops
            // (lerp, addcdiv) make it 7 passes over the buffers instead of 14: for vector models
            // with large weight matrices the update is memory-bound.
            let (g, t) = (&mut group.g, &mut group.t);
            if grad_scale != 1.0 {
                let _ = g.f_mul_scalar_(grad_scale)?;
            }
            let _ = group.m.f_lerp_(g, 1.0 - self.beta1)?;
            let _ = g.f_square_out(t)?;
            let _ = group.v.f_lerp_(t, 1.0 - self.beta2)?;
            match floor {
                Some(tiny) => {
                    let _ = group.v.f_clamp_min_out(t, tiny)?;
                    let _ = t.f_sqrt_()?;
                }
                None => {
                    let _ = group.v.f_sqrt_out(t)?;
                }
            }
            // p -= lr/bc1 · m / (√v/√bc2 + eps), as p += m / t with t = −(√v/√bc2 + eps)·bc1/lr.
            let c = -bc1 / lr;
            let _ = t.f_mul_scalar_(c / bc2.sqrt())?;
            let _ = t.f_add_scalar_(c * self.eps)?;
            let group = &self.groups[gi];
            if group.params_are_flat(&self.params) {
                let _ = group.p.shallow_clone().f_addcdiv_(&group.m, &group.t)?;
                // `set_data` left each parameter its own version counter: bump them as the
                // per-parameter `addcdiv_` did (caches of derived weights key on them).
                crate::ffi::switches::bump_versions(group.idx.iter().map(|&i| &self.params[i].1))?;
                continue;
            }
            for (tv, &i) in group.t_views.iter().zip(&group.idx) {
                let _ = self.params[i].1.shallow_clone().f_addcdiv_(&self.m[i], tv)?;
            }
        }
        Ok(())
    }

    /// The per-tensor update of parameter `i` (skipped when it has no gradient).
    fn step_one(&mut self, i: usize, lr: f64, grad_scale: f64, bc1: f64, bc2: f64) -> Result<()> {
        let p = &self.params[i].1;
        let g = p.grad();
        if !g.defined() {
            return Ok(());
        }
        let g = if grad_scale != 1.0 { g.f_mul_scalar(grad_scale)? } else { g };
        let _ = self.m[i].f_lerp_(&g, 1.0 - self.beta1)?;
        let _ = self.v[i].f_lerp_(&g.f_square()?, 1.0 - self.beta2)?;
        let c = -bc1 / lr;
        let t = self.v[i].f_sqrt()?.f_mul_scalar(c / bc2.sqrt())?.f_add_scalar(c * self.eps)?;
        let _ = p.shallow_clone().f_addcdiv_(&self.m[i], &t)?;
        Ok(())
    }

    /// `m.<name>`, `v.<name>` for every parameter.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: i64, origin: &str) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let Some(src) = tensors.get(&key) else { bail!("{origin}: missing optimizer state {key}") };
                if src.size() != p.size() {
                    bail!("{origin}: {key} has shape {:?}, parameter has {:?}", src.size(), p.size());
                }
                dst.f_copy_(&src.f_to_kind(dst.kind())?.f_to_device(dst.device())?)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
