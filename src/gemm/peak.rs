//! The peak probe: how many f32 FLOP/s one core sustains with a given ISA, measured
//! with independent FMA chains that never touch memory. Every GEMM figure in the
//! benchmarks is reported as a share of this number, measured in the same run on the
//! same machine (our machines vary: Zen 4 peaks near 117 GFLOP/s per core, Zen 5 near
//! 245 with AVX-512).

use super::kernel::{self, Isa};
use crate::error::Result;
use std::time::{Duration, Instant};

/// Measures single-thread f32 throughput of `isa` in GFLOP/s over about `duration`
/// (best of several rounds, after a warm-up). Run it on an otherwise idle core.
///
/// # Errors
/// [`Error::Kernel`](crate::Error::Kernel) when this CPU cannot run `isa`.
pub fn peak_gflops(isa: Isa, duration: Duration) -> Result<f64> {
    isa.check_available()?;
    let probe: fn(u64) -> (f32, u64) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernel::avx512::fma_chains,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernel::avx2::fma_chains,
        _ => kernel::portable::fma_chains,
    };
    // Calibrate the iteration count to ~1/8 of the budget per round.
    let mut iters = 1u64 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box(probe(iters));
        if t.elapsed() * 8 >= duration / 8 || iters >= 1 << 40 {
            break;
        }
        iters *= 2;
    }
    let mut best = 0.0f64;
    let end = Instant::now() + duration;
    while Instant::now() < end || best == 0.0 {
        let t = Instant::now();
        let (folded, flops_per_iter) = probe(iters);
        std::hint::black_box(folded);
        let secs = t.elapsed().as_secs_f64();
        best = best.max((iters * flops_per_iter) as f64 / secs / 1e9);
    }
    Ok(best)
}
