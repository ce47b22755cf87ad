//! safetensors in and out, with metadata, and loading into a `VarStore` that checks every name
//! and shape (tch's own loader broadcasts a wrong shape silently).
use super::atomic::atomic_write_bytes;
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Bool => Dtype::BOOL,
        k => bail!("cannot store a {k:?} tensor in safetensors"),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::BOOL => Kind::Bool,
        d => bail!("unsupported safetensors dtype {d:?}"),
    })
}

/// Serialises named tensors (any device) with string metadata, atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.f_detach()?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        bufs.push((name.clone(), dtype_of(t.kind())?, shape, bytes));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let bytes = safetensors::serialize(views, &Some(meta))?;
    atomic_write_bytes(path, &bytes)
}

/// Reads every tensor (on the CPU) and the metadata; a truncated or corrupt file is an error
/// naming the file.
pub fn read_safetensors(path: &Path) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file (truncated or corrupt?): {e}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let metadata: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).with_context(|| format!("{}: tensor {name}", path.display()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.insert(name, t);
    }
    Ok((out, metadata))
}

/// Copies `tensors` into the store's variables. Every variable must be present with the same
/// shape; extra entries are an error too (they mean the file is for another architecture).
pub fn load_into_varstore(vs: &tch::nn::VarStore, tensors: &BTreeMap<String, Tensor>, origin: &str) -> Result<()> {
    let vars = vs.variables();
    let mut problems = vec![];
    for (name, var) in &vars {
        match tensors.get(name) {
            None => problems.push(format!("missing key {name} (expected shape {:?})", var.size())),
            Some(t) if t.size() != var.size() => {
                problems.push(format!("key {name}: expected shape {:?}, found {:?}", var.size(), t.size()))
            }
            _ => {}
        }
    }
    for name in tensors.keys() {
        if !vars.contains_key(name) {
            problems.push(format!("unexpected key {name} (shape {:?})", tensors[name].size()));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        let n = problems.len();
        let shown: Vec<_> = problems.into_iter().take(12).collect();
        bail!("{origin} does not match the model ({n} problems):\n  {}", shown.join("\n  "));
    }
    let _g = tch::no_grad_guard();
    for (name, var) in vars {
        let src = &tensors[&name];
        var.shallow_clone().f_copy_(&src.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
    }
    Ok(())
}

/// The store's variables sorted by name, for writing.
pub fn named_variables(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
