//! `load_parameters` and `load_checkpoint` (safetensors, and the raw format of earlier
//! releases): any bytes are a clean `Ok` or `Err`, never a panic, and a rejected file
//! leaves the model unchanged. The first byte picks the loader. Seeds worth starting
//! from: a file `save_checkpoint` wrote for this model, behind a first byte.
#![no_main]

use fusegrad::nn::{Loss, Optimizer, Sequential};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let mut m = Sequential::builder(3)
        .seed(1)
        .dense(4)
        .relu()
        .dense(2)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.1))
        .expect("a valid model");
    let before = m.clone();
    let result =
        if which % 2 == 0 { m.load_parameters_from_bytes(bytes) } else { m.load_checkpoint_from_bytes(bytes) };
    if result.is_err() {
        let same = m.layers().iter().zip(before.layers()).all(|(a, b)| format!("{a:?}") == format!("{b:?}"))
            && m.iterations() == before.iterations();
        assert!(same, "a rejected file changed the model");
    }
});
