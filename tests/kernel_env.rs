//! `FUSEGRAD_KERNEL` forces a kernel path. It is read once per process, so this test
//! has its own test binary and sets the variable before the first GEMM.

use fusegrad::gemm::{default_isa, gemm, Accum, Epilogue, Isa};
use fusegrad::Matrix;

#[test]
fn env_var_forces_the_portable_path() {
    std::env::set_var("FUSEGRAD_KERNEL", "portable");
    assert_eq!(default_isa().unwrap(), Isa::Portable);
    let a = Matrix::from_fn(3, 2, |i, j| (i + j) as f32);
    let b = Matrix::from_fn(2, 2, |i, j| (i * j) as f32 + 1.0);
    let mut c = Matrix::zeros(3, 2);
    gemm(c.view_mut(), a.view(), b.view(), Accum::Overwrite, Epilogue::None).unwrap();
    assert_eq!(c.as_slice(), &[1.0, 2.0, 3.0, 5.0, 5.0, 8.0]);
}
