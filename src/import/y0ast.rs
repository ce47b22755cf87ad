//! y0ast/Glow-PyTorch checkpoints (`flowzoo import y0ast`).
//!
//! Their math is flowzoo's native Glow (log-scale ActNorm; hidden convs without bias followed by
//! ActNorm; zero-padded zero-convs with `logs [C,1,1]` and factor 3; interleaved (shift, scale)
//! and split (mean, log-std); contiguous top prior from `ZeroConv2d(2C -> 2C)` on zeros;
//! channel-major squeeze), so importing renames:
//!
//! | y0ast (`j = i·(K+2)`)                         | flowzoo                              |
//! |-----------------------------------------------|--------------------------------------|
//! | `flow.layers.{j+1+k}.actnorm.*`, `.invconv.*` | `levels.{i}.steps.{k}.actnorm.*`, ...|
//! | `flow.layers.{j+1+k}.block.{0,2,4}.*`          | `levels.{i}.steps.{k}.coupling.net.{0,2,4}.*` |
//! | `flow.layers.{j+K+1}.conv.*`                   | `levels.{i}.split.*`                 |
//! | `learn_top_fn.*`                               | `prior.learn_top.*`                  |
//! | `prior_h` (zeros buffer)                       | checked to be zeros                  |
//!
//! ActNorm's `inited` flag is not in y0ast's state_dict (their `set_actnorm_init()` after
//! loading); flowzoo stores it, and an imported ActNorm is initialised (`initialized = 1`).
use super::{convert, indices, model_variables, parse_level, write_run_on, Fixed, Imported, KeyMap, LevelPart, Source};
use crate::config::{Config, CouplingChoice, GlowStyle, PermutationChoice};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

/// The architecture fields of y0ast's `hparams.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub k: i64,
    pub l: i64,
    pub hidden_channels: i64,
    pub affine: bool,
    pub flow_permutation: String,
    pub lu_decomposed: bool,
    pub learn_top: bool,
    pub actnorm_scale: f64,
    pub y_condition: bool,
    pub dataset: Option<String>,
}

impl Hparams {
    pub fn read(path: &Path) -> Result<Hparams> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(&v).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Hparams> {
        let obj = v.as_object().context("expected a JSON object (the hparams.json y0ast's train.py writes)")?;
        let get = |k: &str| obj.get(k).with_context(|| format!("no {k:?} key (y0ast's train.py writes it)"));
        let int = |k: &str| -> Result<i64> {
            let x = get(k)?;
            x.as_i64().or_else(|| x.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)).with_context(|| format!("{k:?} must be an integer, got {x}"))
        };
        let boolean = |k: &str, default: Option<bool>| -> Result<bool> {
            match (obj.get(k), default) {
                (None, Some(d)) => Ok(d),
                (None, None) => bail!("no {k:?} key (y0ast's train.py writes it)"),
                (Some(x), _) => x.as_bool().with_context(|| format!("{k:?} must be true or false, got {x}")),
            }
        };
        let string = |k: &str| -> Result<String> {
            let x = get(k)?;
            x.as_str().map(str::to_string).with_context(|| format!("{k:?} must be a string, got {x}"))
        };
        let coupling = string("flow_coupling")?;
        let affine = match coupling.as_str() {
            "affine" => true,
            "additive" => false,
            other => bail!("\"flow_coupling\": {other:?} is neither \"affine\" nor \"additive\""),
        };
        Ok(Hparams {
            k: int("K")?,
            l: int("L")?,
            hidden_channels: int("hidden_channels")?,
            affine,
            flow_permutation: string("flow_permutation")?,
            lu_decomposed: boolean("LU_decomposed", None)?,
            learn_top: boolean("learn_top", None)?,
            actnorm_scale: match obj.get("actnorm_scale") {
                None => 1.0,
                Some(x) => x.as_f64().with_context(|| format!("\"actnorm_scale\" must be a number, got {x}"))?,
            },
            y_condition: boolean("y_condition", Some(false))?,
            dataset: obj.get("dataset").and_then(|d| d.as_str()).map(str::to_string),
        })
    }
}

/// What the checkpoint's own keys and shapes say about the architecture.
#[derive(Debug, Default)]
struct Seen {
    k: Option<i64>,
    l: Option<i64>,
    hidden: Option<i64>,
    affine: Option<bool>,
    lu: Option<bool>,
    learn_top: bool,
    channels: Option<i64>,
    image_size: Option<i64>,
}

fn inspect(t: &BTreeMap<String, Tensor>) -> Seen {
    let layers = indices(t, "flow.layers.");
    let steps: Vec<i64> = layers.iter().copied().filter(|j| t.contains_key(&format!("flow.layers.{j}.actnorm.bias"))).collect();
    let splits: Vec<i64> = layers.iter().copied().filter(|j| t.contains_key(&format!("flow.layers.{j}.conv.conv.weight"))).collect();
    let mut s = Seen { learn_top: t.contains_key("learn_top_fn.conv.weight"), ..Seen::default() };
    if steps.is_empty() {
        return s;
    }
    s.l = Some(splits.len() as i64 + 1);
    s.k = Some(match splits.first() {
        Some(&j) => steps.iter().filter(|&&x| x < j).count() as i64,
        None => steps.len() as i64,
    });
    let j = steps[0];
    let c = t.get(&format!("flow.layers.{j}.actnorm.bias")).map(|b| b.size()).filter(|s| s.len() == 4).map(|s| s[1]);
    s.channels = c.map(|c| c / 4);
    // `first()`: a checkpoint may hold a scalar where a weight should be (then convert() names it).
    s.hidden = t.get(&format!("flow.layers.{j}.block.0.conv.weight")).and_then(|w| w.size().first().copied());
    if let (Some(c), Some(w)) = (c, t.get(&format!("flow.layers.{j}.block.4.conv.weight"))) {
        s.affine = w.size().first().map(|&o| o == c);
    }
    s.lu = Some(t.contains_key(&format!("flow.layers.{j}.invconv.lower")));
    if let (Some(p), Some(l)) = (t.get("prior_h").map(|p| p.size()), s.l) {
        if p.len() == 4 {
            s.image_size = Some(p[2] << l);
        }
    }
    s
}

fn hint(hp: &Hparams, size: i64, channels: i64, seen: &Seen) -> Option<String> {
    let mut diffs = vec![];
    let mut cmp = |what: &str, want: String, got: Option<String>| {
        if let Some(g) = got {
            if g != want {
                diffs.push(format!("{what} {g} (hparams/options say {want})"));
            }
        }
    };
    cmp("K =", hp.k.to_string(), seen.k.map(|x| x.to_string()));
    cmp("L =", hp.l.to_string(), seen.l.map(|x| x.to_string()));
    cmp("hidden_channels =", hp.hidden_channels.to_string(), seen.hidden.map(|x| x.to_string()));
    let coupling = |a: bool| if a { "affine" } else { "additive" }.to_string();
    cmp("flow_coupling =", coupling(hp.affine), seen.affine.map(coupling));
    cmp("LU_decomposed =", hp.lu_decomposed.to_string(), seen.lu.map(|x| x.to_string()));
    cmp("learn_top =", hp.learn_top.to_string(), Some(seen.learn_top.to_string()));
    cmp("image channels", channels.to_string(), seen.channels.map(|x| x.to_string()));
    cmp("image size", size.to_string(), seen.image_size.map(|x| x.to_string()));
    (!diffs.is_empty()).then(|| format!("the checkpoint's tensors say {}", diffs.join(", ")))
}

/// The flowzoo config of a y0ast model.
pub fn config(hp: &Hparams, image_size: i64, channels: i64) -> Result<Config> {
    if hp.y_condition {
        bail!("class-conditional y0ast models (\"y_condition\": true) are not supported: flowzoo imports unconditional ones");
    }
    let permutation = match (hp.flow_permutation.as_str(), hp.lu_decomposed) {
        ("invconv", true) => PermutationChoice::InvconvLu,
        ("invconv", false) => PermutationChoice::Invconv,
        ("reverse", _) => PermutationChoice::Reverse,
        ("shuffle", _) => bail!(
            "\"flow_permutation\": \"shuffle\" cannot be imported: y0ast draws the shuffle indices at random when it builds the model and does not save them"
        ),
        (other, _) => bail!("\"flow_permutation\": {other:?} is not one of \"invconv\", \"reverse\", \"shuffle\""),
    };
    let mut cfg = Config::default();
    cfg.data.path = match hp.dataset.as_deref() {
        Some(d) if !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => format!("data/{d}"),
        _ => "data/images".to_string(),
    };
    cfg.data.image_size = image_size;
    cfg.data.channels = channels;
    cfg.data.n_bits = 8;
    cfg.model.levels = hp.l;
    cfg.model.steps = hp.k;
    cfg.model.width = hp.hidden_channels;
    cfg.model.coupling = if hp.affine { CouplingChoice::Affine } else { CouplingChoice::Additive };
    cfg.model.permutation = permutation;
    cfg.model.learn_top = hp.learn_top;
    cfg.model.conditional = false;
    cfg.model.actnorm_scale = hp.actnorm_scale;
    cfg.model.style = GlowStyle::Flowzoo;
    // Fine-tuning a trained model: a smaller step than training from scratch.
    cfg.train.lr = 1e-4;
    Ok(cfg)
}

/// The y0ast key of each flowzoo variable.
pub fn key_map(cfg: &Config, vars: &BTreeMap<String, Tensor>) -> Result<KeyMap> {
    let k = cfg.model.steps;
    let mut sources = BTreeMap::new();
    for (name, var) in vars {
        let shape = var.size();
        let src = match parse_level(name) {
            Some((i, LevelPart::Step(s, rest))) => {
                let j = i * (k + 2) + 1 + s;
                if rest.ends_with("initialized") {
                    Source::Fill(1.0)
                } else if rest == "permutation.perm" {
                    Source::Keep
                } else if let Some(r) = rest.strip_prefix("coupling.net.") {
                    Source::key(format!("flow.layers.{j}.block.{r}"), &shape)
                } else {
                    Source::key(format!("flow.layers.{j}.{rest}"), &shape)
                }
            }
            Some((i, LevelPart::Split(rest))) => Source::key(format!("flow.layers.{}.conv.{rest}", i * (k + 2) + k + 1), &shape),
            None => match name.strip_prefix("prior.learn_top.") {
                Some(rest) => Source::key(format!("learn_top_fn.{rest}"), &shape),
                None => bail!("internal error: flowzoo variable {name} has no y0ast counterpart"),
            },
        };
        sources.insert(name.clone(), src);
    }
    // prior_h: zeros [1, 2C, H, W] of the top latent.
    let c = cfg.data.channels << (cfg.model.levels + 1);
    let s = cfg.data.image_size >> cfg.model.levels;
    let fixed = vec![Fixed { key: "prior_h".into(), value: Tensor::zeros([1, 2 * c, s, s], (tch::Kind::Float, Device::Cpu)), what: "zeros (y0ast's prior_h buffer)" }];
    Ok(KeyMap { sources, fixed })
}

pub struct Args<'a> {
    pub weights: &'a Path,
    pub hparams: &'a Path,
    pub image_size: Option<i64>,
    pub channels: Option<i64>,
    pub out: &'a Path,
    /// Where the finished run is reopened and checked.
    pub device: Device,
}

/// `flowzoo import y0ast`.
pub fn import(a: &Args) -> Result<(Imported, String)> {
    let hp = Hparams::read(a.hparams)?;
    let file = super::read_checkpoint(a.weights)?;
    let seen = inspect(&file.tensors);
    let from_dataset = match hp.dataset.as_deref() {
        Some("cifar10") | Some("svhn") => Some((32, 3)),
        _ => None,
    };
    let image_size = a
        .image_size
        .or(from_dataset.map(|d| d.0))
        .or(seen.image_size)
        .context("cannot tell the image size: hparams.json names no known dataset (cifar10, svhn); pass --image-size N")?;
    let channels = a
        .channels
        .or(from_dataset.map(|d| d.1))
        .or(seen.channels)
        .context("cannot tell the number of image channels: pass --channels C")?;
    let cfg = config(&hp, image_size, channels)?;
    cfg.validate().context("the y0ast model as a flowzoo config")?;
    let sess = Session::new(&cfg, vec![], Device::Cpu)?;
    let vars = model_variables(&sess);
    let map = key_map(&cfg, &vars)?;
    let origin = format!("{} ({})", a.weights.display(), file.what);
    let weights = convert(&vars, &map, &file.tensors, &origin, hint(&hp, image_size, channels, &seen))?;
    drop(sess);
    let imp = write_run_on(a.out, &cfg, super::unlabelled(), &weights, &format!("y0ast:{}", a.weights.display()), a.device)?;
    Ok((imp, file.what))
}
