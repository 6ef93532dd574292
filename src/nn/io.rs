//! Saving and loading a model: [`Sequential::save_parameters`] and
//! [`Sequential::save_checkpoint`] write safetensors files (the layout is in the
//! `saved` module's docs, repeated in docs/architecture.md); the loaders also read the
//! raw format of fusegrad 0.1's first releases, little-endian:
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
//!
//! Saving never destroys a good file: the bytes go to a temporary file in the same
//! directory, which is flushed to disk and then renamed over the target (an atomic
//! replacement on POSIX file systems and NTFS). A failure part-way (a full disk, a
//! killed process) leaves the previous file as it was, and the temporary one is removed
//! when the error can be seen.

use crate::error::{Error, Result};
use crate::nn::model::{Layer, Sequential};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"FGPARAMS";
const VERSION: u32 = 1;

impl Sequential {
    /// Writes the Dense layers' weights and biases to `path` as a safetensors file
    /// (`dense.{k}.weights` `[n_inputs, n_neurons]`, `dense.{k}.biases`; the
    /// architecture, the crate version and a checksum in its metadata), which PyTorch,
    /// candle and NumPy read (see the README for `nn.Linear`, whose weight is the
    /// transpose).
    ///
    /// The file is replaced atomically: written to a temporary file beside it, synced,
    /// then renamed over `path`, so that a failure part-way never leaves a truncated
    /// file where a good one was.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when the file cannot be written; `path` then keeps
    /// its previous contents (or stays absent).
    pub fn save_parameters(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = crate::nn::saved::to_bytes(self, false)?;
        write_atomically(path.as_ref(), &bytes, |tmp| File::create_new(tmp))
    }

    /// [`Self::save_parameters`] plus everything training needs to go on exactly as if
    /// it had not stopped: the optimizer state of every layer, the iteration and epoch
    /// counts (the learning-rate decay, Adam's bias correction and the shuffle follow
    /// them) and the dropout layers' mask generators. A model built the same way that
    /// loads it with [`Self::load_checkpoint`] and calls `fit` again trains bit for bit
    /// as the uninterrupted run would have (with the same `FitOptions`).
    ///
    /// # Errors
    /// As [`Self::save_parameters`].
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = crate::nn::saved::to_bytes(self, true)?;
        write_atomically(path.as_ref(), &bytes, |tmp| File::create_new(tmp))
    }

    /// Restores a file written by [`Self::save_checkpoint`] into this model, which must
    /// have the same architecture (layers, sizes, activations, dropout rates, loss) and
    /// optimizer. Nothing changes unless the whole file is valid.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::Format`] when it is not a
    /// fusegrad checkpoint, is corrupt (the checksum), or was saved from another
    /// architecture or optimizer (the message shows both).
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        self.load_checkpoint_from_bytes(&bytes).map_err(|e| match e {
            Error::Format(msg) => Error::Format(format!("{}: {msg}", path.display())),
            e => e,
        })
    }

    /// [`Self::load_checkpoint`] from bytes already in memory.
    ///
    /// # Errors
    /// [`Error::Format`] as for [`Self::load_checkpoint`].
    pub fn load_checkpoint_from_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let restored = crate::nn::saved::read(self, bytes, true)?;
        self.copy_tensors_in(restored.tensors, true);
        self.restore_progress(restored.iterations, restored.epochs, &restored.dropout_rngs);
        Ok(())
    }

    /// Reads the weights and biases of a file written by [`Self::save_parameters`] or
    /// [`Self::save_checkpoint`] (or in the raw format of earlier releases) into this
    /// model, which must have the same architecture (a safetensors file records it: a
    /// sigmoid model does not load a ReLU model's file). The optimizer state and the
    /// counters are left as they are. Nothing changes unless the whole file is valid.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::Format`] when it is not a
    /// parameter file, is truncated, corrupt (the checksum) or too long, or was saved
    /// from another architecture (the message shows both).
    pub fn load_parameters(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        self.load_parameters_from_bytes(&bytes).map_err(|e| match e {
            Error::Format(msg) => Error::Format(format!("{}: {msg}", path.display())),
            e => e,
        })
    }

    /// [`Self::load_parameters`] from the bytes of a parameter file already in memory.
    /// Allocates only what the model's own layer shapes need, whatever the bytes
    /// claim; nothing changes unless the whole input is valid.
    ///
    /// # Errors
    /// [`Error::Format`] as for [`Self::load_parameters`] (without a file name).
    pub fn load_parameters_from_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if crate::nn::saved::is_safetensors(bytes) {
            let tensors = crate::nn::saved::read(self, bytes, false)?.tensors;
            self.copy_tensors_in(tensors, false);
            return Ok(());
        }
        let bad = |msg: String| Error::Format(msg);
        let mut at = 0usize;
        let mut take = |n: usize, what: &str| -> Result<&[u8]> {
            let chunk = bytes
                .get(at..at.saturating_add(n))
                .ok_or_else(|| bad(format!("file ends inside {what} (offset {at})")))?;
            at += n;
            Ok(chunk)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if take(8, "the magic number")? != MAGIC {
            return Err(bad(
                "not a fusegrad parameter file (neither safetensors nor the raw \"FGPARAMS\" format)".into()
            ));
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
        let mut params = Vec::with_capacity(2 * count);
        for (i, &(n_in, n_out)) in shapes.iter().enumerate() {
            let (fi, fo) = (u32_at(take(4, "a layer shape")?), u32_at(take(4, "a layer shape")?));
            if (fi, fo) != (n_in, n_out) {
                return Err(bad(format!("Dense layer {i} is {fi}→{fo} in the file, {n_in}→{n_out} in the model")));
            }
            let floats = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            };
            params.push(floats(take(4 * n_in * n_out, "weights")?));
            params.push(floats(take(4 * n_out, "biases")?));
        }
        if at != bytes.len() {
            return Err(bad(format!("{} unexpected bytes after the last layer", bytes.len() - at)));
        }
        self.copy_tensors_in(params, false);
        Ok(())
    }

    /// Copies tensors a reader has checked into the Dense layers, in file order: each
    /// layer's weights, biases and, with `state`, its optimizer state's non-empty parts.
    fn copy_tensors_in(&mut self, tensors: Vec<Vec<f32>>, state: bool) {
        let mut tensors = tensors.into_iter();
        let mut next = || tensors.next().expect("the reader counted the tensors");
        for layer in self.layers_mut() {
            if let Layer::Dense(d) = layer {
                d.weights.as_mut_slice().copy_from_slice(&next());
                d.biases.copy_from_slice(&next());
                for s in d.optimizer_state_mut().into_iter().filter(|s| state && !s.is_empty()) {
                    s.copy_from_slice(&next());
                }
            }
        }
        self.measure_weight_maxima();
    }
}

/// A destination that can be flushed to stable storage.
trait Durable: Write {
    fn sync(&mut self) -> std::io::Result<()>;
}

impl Durable for File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_all()
    }
}

/// Writes `bytes` to a fresh temporary file beside `path` (made by `create`), syncs it
/// and renames it over `path`. On any error the temporary file is removed and `path`
/// is untouched.
fn write_atomically<W: Durable>(
    path: &Path,
    bytes: &[u8],
    create: impl FnOnce(&Path) -> std::io::Result<W>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |what: &str, e: std::io::Error| Error::io(format!("cannot write {}: {what}", path.display()), e);
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("cannot write {}: not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = create(&tmp).map_err(|e| err("cannot create a temporary file beside it", e))?;
        file.write_all(bytes).map_err(|e| err("writing the temporary file", e))?;
        file.flush().map_err(|e| err("flushing the temporary file", e))?;
        file.sync().map_err(|e| err("syncing the temporary file", e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| err("renaming the temporary file over it", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable where the platform allows syncing a directory.
    // Not under miri: it does not emulate fsync of a directory handle and aborts the
    // test instead of returning an error the `let _` could drop.
    #[cfg(all(unix, not(miri)))]
    if let Some(dir) = path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that accepts `budget` bytes, then fails every write (a full disk).
    struct FailAfter {
        file: File,
        budget: usize,
    }

    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.budget == 0 {
                return Err(std::io::Error::other("no space left on device (simulated)"));
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.file.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }

    impl Durable for FailAfter {
        fn sync(&mut self) -> std::io::Result<()> {
            self.file.sync_all()
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fusegrad-io-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_write_that_fails_part_way_leaves_the_old_file_and_no_temporary() {
        let d = dir("fail");
        let path = d.join("params.bin");
        std::fs::write(&path, b"the good old parameters").unwrap();
        let new = vec![7u8; 10_000];
        for budget in [0, 1, 4096, 9_999] {
            let r = write_atomically(&path, &new, |tmp| Ok(FailAfter { file: File::create_new(tmp)?, budget }));
            let e = r.unwrap_err().to_string();
            assert!(e.contains("params.bin") && e.contains("no space left"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), b"the good old parameters", "budget {budget}");
            let left: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, vec![std::ffi::OsString::from("params.bin")], "a temporary file was left behind");
        }
        // With room enough, the file is replaced whole.
        write_atomically(&path, &new, |tmp| Ok(FailAfter { file: File::create_new(tmp)?, budget: 10_000 })).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), new);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn saving_into_a_missing_directory_is_an_error_naming_the_path() {
        let d = dir("missing");
        let path = d.join("no-such-dir").join("p.bin");
        let e = write_atomically(&path, b"x", |tmp| File::create_new(tmp)).unwrap_err().to_string();
        assert!(e.contains("no-such-dir") && e.contains("temporary"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
