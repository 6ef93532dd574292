//! The save format: [safetensors](https://github.com/huggingface/safetensors), which
//! PyTorch, candle, JAX and NumPy read.
//!
//! Tensors (f32, little-endian, row-major), `k` counting the Dense layers from 0:
//!
//! ```text
//! dense.{k}.weights          [n_inputs, n_neurons]   (PyTorch's nn.Linear.weight is its transpose)
//! dense.{k}.biases           [n_neurons]
//! dense.{k}.weights.state0   [n_inputs, n_neurons]   checkpoints: momentum / cache / Adam's m
//! dense.{k}.weights.state1   [n_inputs, n_neurons]   checkpoints: Adam's v
//! dense.{k}.biases.state0, dense.{k}.biases.state1   [n_neurons], likewise
//! ```
//!
//! `__metadata__` (strings): `format` = `fusegrad`, `kind` = `parameters` or
//! `checkpoint`, `fusegrad_version`, `architecture` (the inputs, every layer with its
//! sizes, activation and dropout rate, and the loss), `checksum_fnv1a64` (of every
//! tensor's bytes in the order above, so that a flipped byte is an error, not a silent
//! change); checkpoints add `optimizer` (its kind and every hyperparameter),
//! `iterations`, `epochs` and `dropout.{j}.rng` (the mask generators' states).

use crate::error::{Error, Result};
use crate::nn::model::{Layer, Sequential};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;

/// Whether `bytes` look like a safetensors file (an 8-byte header length, then JSON).
pub(crate) fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{'
}

/// The names and data of the tensors a file of `model` holds, in file order.
fn tensors(model: &Sequential, checkpoint: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for (k, d) in dense_layers(model).enumerate() {
        let (n_in, n_out) = (d.n_inputs(), d.n_neurons());
        out.push((format!("dense.{k}.weights"), vec![n_in, n_out], d.weights.as_slice().to_vec()));
        out.push((format!("dense.{k}.biases"), vec![n_out], d.biases.clone()));
        if checkpoint {
            let [w0, w1, b0, b1] = d.optimizer_state();
            for (name, shape, data) in [
                ("weights.state0", vec![n_in, n_out], w0),
                ("weights.state1", vec![n_in, n_out], w1),
                ("biases.state0", vec![n_out], b0),
                ("biases.state1", vec![n_out], b1),
            ] {
                if !data.is_empty() {
                    out.push((format!("dense.{k}.{name}"), shape, data.to_vec()));
                }
            }
        }
    }
    out
}

fn dense_layers(model: &Sequential) -> impl Iterator<Item = &crate::nn::Dense> {
    model.layers().iter().filter_map(|l| if let Layer::Dense(d) = l { Some(d) } else { None })
}

/// What a file records of the model's structure; a load compares it with the model's.
pub(crate) fn architecture(model: &Sequential) -> String {
    let layers: Vec<String> = model.layers().iter().map(Layer::describe).collect();
    format!("{} inputs: {}; loss {:?}", model.n_inputs(), layers.join(", "), model.loss())
}

/// The optimizer and its schedule, as a checkpoint records and compares them.
fn optimizer_text(model: &Sequential) -> String {
    format!("{:?}, {:?}", model.optimizer(), model.schedule())
}

/// FNV-1a, 64 bits: a checksum against corruption (not against tampering).
fn fnv1a64(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The file's bytes.
pub(crate) fn to_bytes(model: &Sequential, checkpoint: bool) -> Result<Vec<u8>> {
    let tensors = tensors(model, checkpoint);
    let data: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| le_bytes(v)).collect();
    let checksum = data.iter().fold(FNV_OFFSET, |h, d| fnv1a64(h, d));
    let mut meta = HashMap::from([
        ("format".to_string(), "fusegrad".to_string()),
        ("kind".into(), if checkpoint { "checkpoint" } else { "parameters" }.into()),
        ("fusegrad_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("architecture".into(), architecture(model)),
        ("checksum_fnv1a64".into(), format!("{checksum:016x}")),
    ]);
    if checkpoint {
        meta.insert("optimizer".into(), optimizer_text(model));
        meta.insert("iterations".into(), model.iterations().to_string());
        meta.insert("epochs".into(), model.epochs_trained().to_string());
        for (j, s) in model.dropout_rng_states().into_iter().enumerate() {
            meta.insert(format!("dropout.{j}.rng"), s.map(|w| format!("{w:016x}")).join(" "));
        }
    }
    let views = tensors
        .iter()
        .zip(&data)
        .map(|((name, shape, _), bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::Format(format!("cannot lay out the tensors: {e}")))?;
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Format(format!("cannot serialise: {e}")))?;
    Ok(with_sorted_header(bytes))
}

/// `bytes` with the JSON header's keys in sorted order, so that one model always saves
/// to the same bytes: safetensors takes the metadata as a `HashMap`, whose order
/// changes from one map to the next. The tensors' offsets are relative to the data
/// after the header, so a header of another length leaves them valid.
fn with_sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    fn sort(v: &mut serde_json::Value) {
        if let serde_json::Value::Object(map) = v {
            map.sort_keys();
            map.values_mut().for_each(sort);
        }
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors wrote JSON");
    sort(&mut header);
    let mut json = serde_json::to_vec(&header).expect("a JSON value serialises");
    // safetensors pads the header with spaces to 8 bytes, aligning the data.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// What a checkpoint restores besides the tensors.
pub(crate) struct Restored {
    pub tensors: Vec<Vec<f32>>,
    pub iterations: u64,
    pub epochs: u64,
    pub dropout_rngs: Vec<[u64; 4]>,
}

/// Reads and checks a file against `model` (architecture, tensor names, shapes and
/// types, checksum; for a checkpoint also the optimizer), without changing anything.
pub(crate) fn read(model: &Sequential, bytes: &[u8], checkpoint: bool) -> Result<Restored> {
    let bad = |msg: String| Error::Format(msg);
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("bad safetensors header: {e}")))?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    let get = |key: &str| meta.get(key).ok_or_else(|| bad(format!("no \"{key}\" in the file's metadata")));
    if get("format")? != "fusegrad" {
        return Err(bad("a safetensors file, but not one fusegrad saved (metadata format is not \"fusegrad\")".into()));
    }
    let kind = get("kind")?;
    if checkpoint && kind != "checkpoint" {
        return Err(bad(format!("a {kind} file, not a checkpoint: it has no optimizer state (use load_parameters)")));
    }
    let (file_arch, model_arch) = (get("architecture")?, architecture(model));
    if *file_arch != model_arch {
        return Err(bad(format!(
            "saved from another architecture: the file has \"{file_arch}\", the model is \"{model_arch}\""
        )));
    }
    if checkpoint {
        let (file_opt, model_opt) = (get("optimizer")?, optimizer_text(model));
        if *file_opt != model_opt {
            return Err(bad(format!("saved with another optimizer: the file has {file_opt}, the model {model_opt}")));
        }
    }
    // Every tensor a file of this model may hold, in the order the checksum covers.
    let mut canonical: Vec<(String, Vec<usize>)> = Vec::new();
    for (k, d) in dense_layers(model).enumerate() {
        let (w, b) = (vec![d.n_inputs(), d.n_neurons()], vec![d.n_neurons()]);
        for (name, shape) in [("weights", &w), ("biases", &b), ("weights.state0", &w), ("weights.state1", &w)] {
            canonical.push((format!("dense.{k}.{name}"), shape.clone()));
        }
        for name in ["biases.state0", "biases.state1"] {
            canonical.push((format!("dense.{k}.{name}"), b.clone()));
        }
    }
    let names = st.names();
    if let Some(extra) = names.iter().find(|n| !canonical.iter().any(|(c, _)| c == *n)) {
        return Err(bad(format!("unexpected tensor \"{extra}\" for this model")));
    }
    let expected = tensors(model, checkpoint);
    if let Some((missing, shape, _)) = expected.iter().find(|(n, _, _)| !names.contains(&n.as_str())) {
        return Err(bad(format!("no tensor \"{missing}\" (the model needs {shape:?})")));
    }
    let mut out = Vec::with_capacity(expected.len());
    let mut checksum = FNV_OFFSET;
    for (name, shape) in canonical.iter().filter(|(n, _)| names.contains(&n.as_str())) {
        let t = st.tensor(name).map_err(|e| bad(format!("tensor \"{name}\": {e}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape.as_slice() {
            return Err(bad(format!(
                "tensor \"{name}\" is {:?} {:?}, the model needs F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        checksum = fnv1a64(checksum, t.data());
        if expected.iter().any(|(n, _, _)| n == name) {
            out.push(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
        }
    }
    if format!("{checksum:016x}") != *get("checksum_fnv1a64")? {
        return Err(bad("checksum mismatch: the tensor data is corrupt".into()));
    }
    let number = |key: &str| get(key)?.parse::<u64>().map_err(|_| bad(format!("metadata \"{key}\" is not a number")));
    let (iterations, epochs, mut dropout_rngs) = (0, 0, Vec::new());
    if !checkpoint {
        return Ok(Restored { tensors: out, iterations, epochs, dropout_rngs });
    }
    for j in 0..model.dropout_rng_states().len() {
        let text = get(&format!("dropout.{j}.rng"))?;
        let words: Vec<u64> = text.split(' ').filter_map(|w| u64::from_str_radix(w, 16).ok()).collect();
        let state: [u64; 4] =
            words.try_into().map_err(|_| bad(format!("metadata \"dropout.{j}.rng\" is not four hex words")))?;
        dropout_rngs.push(state);
    }
    Ok(Restored { tensors: out, iterations: number("iterations")?, epochs: number("epochs")?, dropout_rngs })
}
