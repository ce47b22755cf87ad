//! Reading PyTorch weight files without Python, and without executing anything from them.
//!
//! A `.pt` written by `torch.save` (PyTorch >= 1.6) or `torch.jit.save` is a zip archive: a
//! pickle (`<archive>/data.pkl`) describes the object, and each tensor's storage is a raw
//! little-endian file `<archive>/data/<key>`. The pickle is parsed by `candle-core`'s reader,
//! which only builds a tree of values: it imports nothing and calls nothing (a pickled
//! `os.system` call comes back as inert data). From that tree we take the tensors of
//!
//! * a `state_dict()` (an `OrderedDict`) or a plain dict of tensors;
//! * a checkpoint dict holding one, under any key (`model`, `state_dict`, ...): the one
//!   sub-dict that holds tensors, or the first of `state_dict`, `model_state_dict`, `model`,
//!   `net`, `ema`, `params` when several do;
//! * a TorchScript module (`torch.jit.save`): its parameters and buffers under their dotted
//!   `state_dict()` names;
//! * a whole pickled `nn.Module` (`torch.save(model)`): `_parameters` and `_buffers` of it and
//!   its sub-modules, under their `state_dict()` names.
//!
//! DataParallel's `module.` prefix is stripped when every key has it. `.safetensors` files are
//! read too. The legacy (pre-1.6, non-zip) format is refused with the command that converts it.
//!
//! Every tensor is rebuilt from its storage with its exact size, stride and offset, checked to
//! lie inside the storage, and copied into a contiguous CPU tensor of the same dtype.
use super::read_safetensors;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::DType;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;
use tch::{Kind, Tensor};

/// The named tensors of a weights file.
pub struct WeightsFile {
    pub tensors: BTreeMap<String, Tensor>,
    /// What the file held, for messages, e.g. "a state_dict (135 tensors)".
    pub what: String,
}

/// Sub-dict keys tried, in order, when a checkpoint dict holds several dicts of tensors.
const PREFERRED_KEYS: &[&str] = &["state_dict", "model_state_dict", "model", "net", "ema", "params"];

/// Reads a `.pt` (zip) or `.safetensors` file, chosen by its first bytes (not its name).
pub fn read_weights(path: &Path) -> Result<WeightsFile> {
    let mut head = [0u8; 16];
    let n = {
        let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..]).with_context(|| format!("cannot read {}", path.display()))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    };
    let head = &head[..n];
    let mut file = if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        read_torch_zip(path)?
    } else if head.first() == Some(&0x80) {
        bail!(
            "{p} is in PyTorch's legacy (pre-1.6, non-zip) serialization format, which flowzoo does not read.\n\
             Convert it once with PyTorch (any version >= 1.6), then import the new file:\n  \
             python -c \"import torch; torch.save(torch.load('{p}', map_location='cpu', weights_only=True), 'converted.pt')\"\n\
             (weights_only=True loads tensors and containers only; a file that needs more holds pickled code: \
             load it in the environment that wrote it and save model.state_dict())",
            p = path.display()
        )
    } else if head.len() >= 9 && head[8] == b'{' {
        let (tensors, _) = read_safetensors(path)?;
        let what = format!("a safetensors file ({} tensors)", tensors.len());
        WeightsFile { tensors, what }
    } else {
        bail!(
            "{} is neither a PyTorch checkpoint (a zip archive written by torch.save / torch.jit.save) nor a safetensors file",
            path.display()
        )
    };
    strip_data_parallel(&mut file);
    if file.tensors.is_empty() {
        bail!("{} holds no tensors ({})", path.display(), file.what);
    }
    Ok(file)
}

/// Removes DataParallel's `module.` prefix when every key has it.
fn strip_data_parallel(file: &mut WeightsFile) {
    if !file.tensors.is_empty() && file.tensors.keys().all(|k| k.starts_with("module.")) {
        let t = std::mem::take(&mut file.tensors);
        file.tensors = t.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
        file.what.push_str(", DataParallel `module.` prefix stripped");
    }
}

fn read_torch_zip(path: &Path) -> Result<WeightsFile> {
    let p = path.display();
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {p}"))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| anyhow!("{p}: not a readable zip archive (truncated?): {e}"))?;
    let names: Vec<String> = zip.file_names().map(|n| n.map(|n| n.into_owned())).collect::<Result<_, _>>().map_err(|e| anyhow!("{p}: {e}"))?;
    let pkl = names
        .iter()
        .find(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .cloned()
        .with_context(|| format!("{p} is a zip archive but not a PyTorch checkpoint (it has no data.pkl)"))?;
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Ok(mut bo) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        let _ = bo.read_to_string(&mut s);
        if s.trim() == "big" {
            bail!("{p} was written on a big-endian machine; load and re-save it with PyTorch on a little-endian one");
        }
    }
    let obj = {
        let entry = zip.by_name(&pkl).map_err(|e| anyhow!("{p}: cannot read {pkl}: {e}"))?;
        let mut r = BufReader::new(entry);
        let mut stack = Stack::empty();
        stack.read_loop(&mut r).map_err(|e| anyhow!("{p}: cannot parse {pkl}: {e}"))?;
        stack.finalize().map_err(|e| anyhow!("{p}: cannot parse {pkl}: {e}"))?
    };
    let dir = Path::new(&pkl[..pkl.len() - ".pkl".len()]).to_path_buf();
    let (entries, what) = locate(obj, &dir).with_context(|| format!("{p}"))?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut tensors = BTreeMap::new();
    for (name, info) in entries {
        let t = load_tensor(&mut zip, &info, &mut storages).with_context(|| format!("{p}: tensor {name}"))?;
        if tensors.insert(name.clone(), t).is_some() {
            bail!("{p}: tensor {name} appears twice");
        }
    }
    let what = format!("{what} ({} tensors)", tensors.len());
    Ok(WeightsFile { tensors, what })
}

fn is_tensor_like(obj: &Object) -> bool {
    matches!(obj, Object::Reduce { .. })
}

/// `Some(info)` when `obj` is a pickled tensor; an error for a tensor we cannot read.
fn tensor_info(name: &str, obj: &Object, dir: &Path) -> Result<Option<TensorInfo>> {
    if !is_tensor_like(obj) {
        return Ok(None);
    }
    obj.clone()
        .into_tensor_info(Object::Unicode(name.to_string()), dir)
        .map_err(|e| anyhow!("tensor {name}: {e} (flowzoo reads float16/32/64, bfloat16, uint8 and int64 tensors)"))
}

fn key_str(k: &Object) -> Option<&str> {
    match k {
        Object::Unicode(s) => Some(s),
        _ => None,
    }
}

/// The tensors stored directly as values of a dict.
fn dict_tensors(entries: &[(Object, Object)], prefix: &str, dir: &Path) -> Result<Vec<(String, TensorInfo)>> {
    let mut out = vec![];
    for (k, v) in entries {
        let Some(k) = key_str(k) else { continue };
        if let Some(info) = tensor_info(&format!("{prefix}{k}"), v, dir)? {
            out.push((format!("{prefix}{k}"), info));
        }
    }
    Ok(out)
}

/// `(module, class, attributes)` of a pickled object built as `cls.__new__` + `__setstate__`.
fn as_object(obj: &Object) -> Option<(&str, &str, &[(Object, Object)])> {
    let Object::Build { callable, args } = obj else { return None };
    let Object::Reduce { callable: cls, .. } = callable.as_ref() else { return None };
    let Object::Class { module_name, class_name } = cls.as_ref() else { return None };
    let Object::Dict(attrs) = args.as_ref() else { return None };
    Some((module_name.as_str(), class_name.as_str(), attrs.as_slice()))
}

fn attr<'a>(attrs: &'a [(Object, Object)], name: &str) -> Option<&'a Object> {
    attrs.iter().find(|(k, _)| key_str(k) == Some(name)).map(|(_, v)| v)
}

/// A TorchScript module's tensors (parameters and buffers are its tensor attributes).
fn script_module_tensors(attrs: &[(Object, Object)], prefix: &str, dir: &Path, out: &mut Vec<(String, TensorInfo)>) -> Result<()> {
    for (k, v) in attrs {
        let Some(k) = key_str(k) else { continue };
        let name = format!("{prefix}{k}");
        if let Some(info) = tensor_info(&name, v, dir)? {
            out.push((name, info));
        } else if let Some((m, _, sub)) = as_object(v) {
            if m.starts_with("__torch__") {
                script_module_tensors(sub, &format!("{name}."), dir, out)?;
            }
        }
    }
    Ok(())
}

/// A pickled `nn.Module`'s parameters and buffers, recursively, under `state_dict()` names.
fn nn_module_tensors(attrs: &[(Object, Object)], prefix: &str, dir: &Path, out: &mut Vec<(String, TensorInfo)>) -> Result<()> {
    for table in ["_parameters", "_buffers"] {
        if let Some(Object::Dict(d)) = attr(attrs, table) {
            out.extend(dict_tensors(d, prefix, dir)?);
        }
    }
    if let Some(Object::Dict(mods)) = attr(attrs, "_modules") {
        for (k, v) in mods {
            let (Some(k), Some((_, _, sub))) = (key_str(k), as_object(v)) else { continue };
            nn_module_tensors(sub, &format!("{prefix}{k}."), dir, out)?;
        }
    }
    Ok(())
}

/// The tensors of an object that is a module (TorchScript or pickled `nn.Module`), if it is one.
fn module_tensors(obj: &Object, dir: &Path) -> Result<Option<(Vec<(String, TensorInfo)>, String)>> {
    let Some((module, class, attrs)) = as_object(obj) else { return Ok(None) };
    let mut out = vec![];
    if module.starts_with("__torch__") {
        script_module_tensors(attrs, "", dir, &mut out)?;
        return Ok(Some((out, "a TorchScript module (torch.jit.save)".to_string())));
    }
    if attr(attrs, "_parameters").is_some() && attr(attrs, "_modules").is_some() {
        nn_module_tensors(attrs, "", dir, &mut out)?;
        return Ok(Some((out, format!("a pickled nn.Module {module}.{class} (torch.save(model))"))));
    }
    Ok(None)
}

/// Finds the state dict in the unpickled object.
fn locate(obj: Object, dir: &Path) -> Result<(Vec<(String, TensorInfo)>, String)> {
    if let Some(found) = module_tensors(&obj, dir)? {
        return Ok(found);
    }
    let Object::Dict(entries) = obj else {
        bail!("it holds {}, not a state_dict (a dict of tensors)", describe(&obj));
    };
    let direct = dict_tensors(&entries, "", dir)?;
    if !direct.is_empty() {
        return Ok((direct, "a state_dict".to_string()));
    }
    // A checkpoint dict: find the sub-dict (or module) that holds the tensors.
    let mut found: Vec<(String, Vec<(String, TensorInfo)>, String)> = vec![];
    for (k, v) in &entries {
        let Some(k) = key_str(k) else { continue };
        if let Object::Dict(sub) = v {
            let t = dict_tensors(sub, "", dir)?;
            if !t.is_empty() {
                found.push((k.to_string(), t, format!("a checkpoint dict, state_dict under key {k:?}")));
            }
        } else if let Some((t, what)) = module_tensors(v, dir)? {
            if !t.is_empty() {
                found.push((k.to_string(), t, format!("a checkpoint dict, {what} under key {k:?}")));
            }
        }
    }
    let keys: Vec<String> = entries.iter().filter_map(|(k, _)| key_str(k).map(|s| format!("{s:?}"))).collect();
    match found.len() {
        0 => bail!("it holds a dict without tensors (keys: {}); expected a state_dict or a checkpoint dict holding one", keys.join(", ")),
        1 => {
            let (_, t, what) = found.pop().expect("one");
            Ok((t, what))
        }
        _ => {
            for pref in PREFERRED_KEYS {
                if let Some(i) = found.iter().position(|(k, _, _)| k == pref) {
                    let (_, t, what) = found.swap_remove(i);
                    return Ok((t, what));
                }
            }
            let names: Vec<String> = found.iter().map(|(k, _, _)| format!("{k:?}")).collect();
            bail!(
                "it holds several dicts of tensors (under keys {}) and none is named {}; save the one you mean with torch.save(ckpt[KEY], 'weights.pt')",
                names.join(", "),
                PREFERRED_KEYS.join("/")
            )
        }
    }
}

fn describe(obj: &Object) -> String {
    match obj {
        Object::Build { callable, .. } | Object::Reduce { callable, .. } => match callable.as_ref() {
            Object::Class { module_name, class_name } => format!("an object of class {module_name}.{class_name}"),
            Object::Reduce { callable, .. } => describe(&Object::Reduce { callable: callable.clone(), args: Box::new(Object::None) }),
            _ => "a pickled object".to_string(),
        },
        Object::List(_) => "a list".to_string(),
        Object::Tuple(_) => "a tuple".to_string(),
        Object::Dict(_) => "a dict".to_string(),
        _ => "a single value".to_string(),
    }
}

fn kind_of(dtype: DType) -> Result<Kind> {
    Ok(match dtype {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::U8 => Kind::Uint8,
        DType::I64 => Kind::Int64,
        d => bail!("unsupported dtype {d:?}"),
    })
}

/// Rebuilds one tensor from its storage (read once per storage) with its size, stride and
/// offset, after checking that every element lies inside the storage.
fn load_tensor<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, info: &TensorInfo, storages: &mut HashMap<String, Tensor>) -> Result<Tensor> {
    let kind = kind_of(info.dtype)?;
    let elt = info.dtype.size_in_bytes();
    if !storages.contains_key(&info.path) {
        let mut entry = zip.by_name(&info.path).map_err(|e| anyhow!("storage {}: {e}", info.path))?;
        let need = info.storage_size.checked_mul(elt).context("storage size overflows")?;
        if entry.size() < need as u64 {
            bail!("storage {} has {} bytes, its header says {} (truncated file?)", info.path, entry.size(), need);
        }
        let mut bytes = vec![0u8; need];
        entry.read_exact(&mut bytes).map_err(|e| anyhow!("storage {}: {e}", info.path))?;
        let t = Tensor::f_from_data_size(&bytes, &[info.storage_size as i64], kind)?;
        storages.insert(info.path.clone(), t);
    }
    let storage = &storages[&info.path];
    let size: Vec<i64> = info.layout.dims().iter().map(|&d| d as i64).collect();
    let stride: Vec<i64> = info.layout.stride().iter().map(|&d| d as i64).collect();
    if info.layout.start_offset() % elt != 0 {
        bail!("misaligned storage offset");
    }
    let offset = (info.layout.start_offset() / elt) as i64;
    let numel: i64 = size.iter().product();
    if numel > 0 {
        let last = offset + size.iter().zip(&stride).map(|(s, st)| (s - 1) * st).sum::<i64>();
        if offset < 0 || last >= info.storage_size as i64 {
            bail!("size {size:?}, stride {stride:?}, offset {offset} reach beyond its storage of {} elements (corrupt file?)", info.storage_size);
        }
    }
    Ok(storage.f_as_strided(&size, &stride, Some(offset))?.f_contiguous()?.copy())
}
