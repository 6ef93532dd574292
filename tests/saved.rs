//! The safetensors files: parameters and checkpoints round-trip, a resumed `fit`
//! continues bit for bit, corrupt files and other architectures are clear errors that
//! change nothing, the raw format of earlier releases still loads, and Python's
//! `safetensors` + NumPy reproduce `predict` from the file.

mod common;

use fusegrad::data::spiral;
use fusegrad::nn::{FitOptions, Layer, Loss, Optimizer, Sequential, Targets};
use fusegrad::{Error, Matrix};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusegrad-saved-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model(seed: u64, optimizer: Optimizer) -> Sequential {
    Sequential::builder(2)
        .seed(seed)
        .dense(24)
        .relu()
        .dropout(0.1)
        .dense(16)
        .tanh()
        .dense(3)
        .build(Loss::SoftmaxCrossEntropy, optimizer)
        .unwrap()
}

/// Parameters, optimizer state and counters, as bits.
fn state(m: &Sequential) -> (u64, u64, Vec<u32>) {
    (m.iterations(), m.epochs_trained(), common::parameter_bits(m))
}

#[test]
fn a_checkpoint_resumes_fit_bit_for_bit() {
    let (x, y) = spiral(60, 3, 1);
    let opts = FitOptions::default().with_batch_size(32).with_seed(9);
    let adam = Optimizer::adam(0.02).with_decay(1e-3);
    let mut whole = model(5, adam);
    whole.fit(x.view(), Targets::Classes(&y), &opts.with_epochs(6)).unwrap();

    let d = dir("resume");
    let mut first = model(5, adam);
    first.fit(x.view(), Targets::Classes(&y), &opts.with_epochs(2)).unwrap();
    first.save_checkpoint(d.join("ck.safetensors")).unwrap();
    // Another seed: everything that matters comes from the file.
    let mut resumed = model(77, adam);
    resumed.load_checkpoint(d.join("ck.safetensors")).unwrap();
    assert_eq!(state(&resumed), state(&first));
    resumed.fit(x.view(), Targets::Classes(&y), &opts.with_epochs(4)).unwrap();
    assert!(state(&resumed) == state(&whole), "resumed run differs from the uninterrupted one");
    assert_eq!((resumed.iterations(), resumed.epochs_trained()), (whole.iterations(), 6));
    // Without a checkpoint, two fit calls equal one.
    let mut twice = model(5, adam);
    twice.fit(x.view(), Targets::Classes(&y), &opts.with_epochs(3)).unwrap();
    twice.fit(x.view(), Targets::Classes(&y), &opts.with_epochs(3)).unwrap();
    assert!(state(&twice) == state(&whole));
    std::fs::remove_dir_all(&d).ok();
}

/// One model saves to the same bytes every time (the metadata reaches safetensors as a
/// `HashMap`, each with its own order), and those bytes load back.
#[test]
fn a_model_saves_to_the_same_bytes_every_time() {
    let (x, y) = spiral(20, 3, 2);
    let mut m = model(3, Optimizer::adam(0.01));
    m.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_epochs(1).with_batch_size(16)).unwrap();
    let d = dir("same-bytes");
    for kind in ["params", "checkpoint"] {
        let files: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                let p = d.join(format!("{kind}{i}.safetensors"));
                if kind == "params" { m.save_parameters(&p) } else { m.save_checkpoint(&p) }.unwrap();
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert!(files.iter().all(|f| f == &files[0]), "{kind}: the saved bytes differ between saves");
        // The header's metadata keys are in sorted order.
        let n = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&files[0][8..8 + n]).unwrap();
        let keys = ["architecture", "checksum_fnv1a64", "format", "fusegrad_version", "kind"];
        let at: Vec<usize> = keys.iter().map(|k| header.find(&format!("\"{k}\"")).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{kind}: metadata keys not sorted: {header}");
        assert_eq!((8 + n) % 8, 0, "the data starts 8-byte aligned");
        let mut back = model(4, Optimizer::adam(0.01));
        if kind == "params" {
            back.load_parameters(d.join("params0.safetensors"))
        } else {
            back.load_checkpoint(d.join("checkpoint0.safetensors"))
        }
        .unwrap();
        assert_eq!(back.predict(x.view()).unwrap(), m.predict(x.view()).unwrap());
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_files_and_other_architectures_are_errors_that_change_nothing() {
    let d = dir("bad");
    let (x, y) = spiral(30, 3, 2);
    let mut m = model(1, Optimizer::adam(0.01));
    m.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_epochs(2)).unwrap();
    m.save_parameters(d.join("p.safetensors")).unwrap();
    m.save_checkpoint(d.join("c.safetensors")).unwrap();
    let good = std::fs::read(d.join("p.safetensors")).unwrap();

    let mut target = model(2, Optimizer::adam(0.01));
    let before = state(&target);
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let flipped = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x10;
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a flipped data byte", flipped(good.len() - 5), "checksum"),
        ("truncated", good[..good.len() - 3].to_vec(), "not a valid safetensors file"),
        ("a broken header", flipped(8 + header_len / 2), ""),
        ("empty", Vec::new(), "ends inside the magic number"),
        ("trailing bytes", [good.as_slice(), &[0u8; 4]].concat(), "not a valid safetensors file"),
    ];
    for (name, bytes, says) in cases {
        let err = target.load_parameters_from_bytes(&bytes).expect_err(name);
        assert!(matches!(err, Error::Format(_)) && err.to_string().contains(says), "{name}: {err}");
        assert_eq!(state(&target), before, "{name}: model changed");
    }
    // Another activation, another width, another loss: named, with both architectures.
    let sigmoid = || {
        Sequential::builder(2)
            .dense(24)
            .sigmoid()
            .dropout(0.1)
            .dense(16)
            .tanh()
            .dense(3)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.01))
            .unwrap()
    };
    let wider = || {
        Sequential::builder(2)
            .dense(25)
            .relu()
            .dropout(0.1)
            .dense(16)
            .tanh()
            .dense(3)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.01))
            .unwrap()
    };
    for (name, mut other) in [("sigmoid", sigmoid()), ("wider", wider())] {
        let err = other.load_parameters(d.join("p.safetensors")).unwrap_err();
        assert!(
            err.to_string().contains("another architecture") && err.to_string().contains("Dense 2→24 + ReLU"),
            "{name}: {err}"
        );
    }
    // A checkpoint needs a checkpoint file and the same optimizer; a checkpoint file
    // loads as parameters too.
    let err = target.load_checkpoint(d.join("p.safetensors")).unwrap_err();
    assert!(err.to_string().contains("not a checkpoint"), "{err}");
    let mut sgd = model(2, Optimizer::sgd(0.1));
    let err = sgd.load_checkpoint(d.join("c.safetensors")).unwrap_err();
    assert!(err.to_string().contains("another optimizer"), "{err}");
    assert_eq!(state(&target), before);
    target.load_parameters(d.join("c.safetensors")).unwrap();
    assert_eq!(target.predict(x.view()).unwrap(), m.predict(x.view()).unwrap());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn the_raw_format_of_earlier_releases_still_loads() {
    // Magic, version 1, layer count, then per Dense layer its shape, weights, biases.
    let m = model(3, Optimizer::sgd(0.1));
    let mut bytes = b"FGPARAMS".to_vec();
    bytes.extend(1u32.to_le_bytes());
    let dense: Vec<_> =
        m.layers().iter().filter_map(|l| if let Layer::Dense(d) = l { Some(d) } else { None }).collect();
    bytes.extend((dense.len() as u32).to_le_bytes());
    for d in &dense {
        bytes.extend((d.n_inputs() as u32).to_le_bytes());
        bytes.extend((d.n_neurons() as u32).to_le_bytes());
        for x in d.weights.as_slice().iter().chain(&d.biases) {
            bytes.extend(x.to_le_bytes());
        }
    }
    let mut other = model(4, Optimizer::sgd(0.1));
    other.load_parameters_from_bytes(&bytes).unwrap();
    let x = Matrix::from_fn(5, 2, |i, j| (i as f32 - j as f32) / 3.0);
    assert_eq!(other.predict(x.view()).unwrap(), m.predict(x.view()).unwrap());
    bytes.push(0);
    assert!(other.load_parameters_from_bytes(&bytes).unwrap_err().to_string().contains("unexpected bytes"));
}

#[test]
fn python_reads_the_file_and_reproduces_predict() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python).args(["-c", "import safetensors, numpy"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI: {python} with the safetensors and numpy modules is required (.ci/run installs them)");
        }
        eprintln!("skipping: {python} with safetensors and numpy not found (python3 -m pip install safetensors numpy)");
        return;
    }
    let d = dir("python");
    let (x, y) = spiral(40, 3, 3);
    let mut m = model(6, Optimizer::adam(0.02));
    m.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_epochs(5)).unwrap();
    m.save_parameters(d.join("model.safetensors")).unwrap();
    let probs = m.predict(x.view()).unwrap();
    let write = |name: &str, mat: &Matrix| {
        let text: Vec<String> = (0..mat.rows())
            .map(|i| mat.row(i).iter().map(|v| format!("{v:e}")).collect::<Vec<_>>().join(" "))
            .collect();
        std::fs::write(d.join(name), text.join("\n")).unwrap();
    };
    write("x.txt", &x);
    write("probs.txt", &probs);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_safetensors.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(d.join("model.safetensors"))
        .arg(d.join("x.txt"))
        .arg(d.join("probs.txt"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python check failed:\n{said}");
    assert!(said.contains("max |difference|"), "{said}");
    std::fs::remove_dir_all(&d).ok();
}
