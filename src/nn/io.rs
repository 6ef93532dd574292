//! Saving and loading a model's parameters.
//!
//! The file holds the Dense layers' weights and biases, in order, little-endian:
//!
//! ```text
//! offset  bytes             field
//! 0       8                 magic "FGPARAMS"
//! 8       4                 format version, u32 = 1
//! 12      4                 number of Dense layers L, u32
//! then L times:
//!         4                 n_inputs, u32
//!         4                 n_neurons, u32
//!         4·n_inputs·n_neurons   weights, f32, row-major (n_inputs × n_neurons)
//!         4·n_neurons            biases, f32
//! ```
//! and nothing after. The architecture itself (activations, dropout, loss) is not
//! stored: load into a model built the same way. Optimizer state is not stored either.

use crate::error::{Error, Result};
use crate::nn::model::{Layer, Sequential};
use std::path::Path;

const MAGIC: &[u8; 8] = b"FGPARAMS";
const VERSION: u32 = 1;

impl Sequential {
    /// Writes the Dense layers' parameters to `path` (format in [`crate::nn`]'s
    /// `io` module docs: magic, version, then per layer its shape, weights, biases).
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when the file cannot be written.
    pub fn save_parameters(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let dense: Vec<_> =
            self.layers().iter().filter_map(|l| if let Layer::Dense(d) = l { Some(d) } else { None }).collect();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(dense.len() as u32).to_le_bytes());
        for d in dense {
            bytes.extend_from_slice(&(d.n_inputs() as u32).to_le_bytes());
            bytes.extend_from_slice(&(d.n_neurons() as u32).to_le_bytes());
            for &x in d.weights.as_slice().iter().chain(&d.biases) {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        std::fs::write(path, bytes).map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
    }

    /// Reads parameters written by [`Self::save_parameters`] into this model, which
    /// must have the same Dense layer shapes. Nothing changes unless the whole file is
    /// valid.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::Format`] when it is not a
    /// parameter file, is truncated or too long, or its layer shapes differ from the
    /// model's (the message says which layer and both shapes).
    pub fn load_parameters(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        let bad = |msg: String| Error::Format(format!("{}: {msg}", path.display()));
        let mut at = 0usize;
        let mut take = |n: usize, what: &str| -> Result<&[u8]> {
            let chunk = bytes.get(at..at + n).ok_or_else(|| bad(format!("file ends inside {what} (offset {at})")))?;
            at += n;
            Ok(chunk)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if take(8, "the magic number")? != MAGIC {
            return Err(bad("not a fusegrad parameter file (magic number is not \"FGPARAMS\")".into()));
        }
        let version = u32_at(take(4, "the version")?);
        if version != VERSION as usize {
            return Err(bad(format!("format version {version}, this build reads version {VERSION}")));
        }
        let count = u32_at(take(4, "the layer count")?);
        let shapes: Vec<(usize, usize)> = self
            .layers()
            .iter()
            .filter_map(|l| if let Layer::Dense(d) = l { Some((d.n_inputs(), d.n_neurons())) } else { None })
            .collect();
        if count != shapes.len() {
            return Err(bad(format!("file has {count} Dense layers, the model has {}", shapes.len())));
        }
        let mut params = Vec::with_capacity(count);
        for (i, &(n_in, n_out)) in shapes.iter().enumerate() {
            let (fi, fo) = (u32_at(take(4, "a layer shape")?), u32_at(take(4, "a layer shape")?));
            if (fi, fo) != (n_in, n_out) {
                return Err(bad(format!("Dense layer {i} is {fi}→{fo} in the file, {n_in}→{n_out} in the model")));
            }
            let floats = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            };
            let w = floats(take(4 * n_in * n_out, "weights")?);
            let b = floats(take(4 * n_out, "biases")?);
            params.push((w, b));
        }
        if at != bytes.len() {
            return Err(bad(format!("{} unexpected bytes after the last layer", bytes.len() - at)));
        }
        let mut params = params.into_iter();
        for layer in self.layers_mut() {
            if let Layer::Dense(d) = layer {
                let (w, b) = params.next().expect("counted above");
                d.weights.as_mut_slice().copy_from_slice(&w);
                d.biases.copy_from_slice(&b);
            }
        }
        Ok(())
    }
}
