//! `load_parameters`: any bytes are a clean `Ok` or `Err`, never a panic; a rejected
//! file leaves the model unchanged; allocation is bounded by the model, not the file.
#![no_main]

use fusegrad::nn::{Loss, Optimizer, Sequential};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = Sequential::builder(3)
        .seed(1)
        .dense(4)
        .relu()
        .dense(2)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))
        .expect("a valid model");
    let before = m.clone();
    if m.load_parameters_from_bytes(data).is_err() {
        let same = m.layers().iter().zip(before.layers()).all(|(a, b)| format!("{a:?}") == format!("{b:?}"));
        assert!(same, "a rejected file changed the model");
    }
});
