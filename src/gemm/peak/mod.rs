//! The peak probe: how many f32 FLOP/s one core sustains with a given ISA path,
//! measured with independent FMA chains that never touch memory. Every GEMM figure in
//! the benchmarks is reported as a share of the peak of the path that produced it,
//! measured in the same run on the same machine (our machines vary: Zen 4 peaks near
//! 117 GFLOP/s per core with either ymm or zmm FMAs, Zen 5 near 245 with zmm and half
//! that with ymm, Zen 3 near 98 with ymm).
//!
//! Each path's probe keeps enough chains in flight to hide the FMA latency on every
//! core we know of, and few enough that they fit in the registers that path may use
//! (16 ymm for AVX2, 32 zmm for AVX-512, 32 for NEON, 16 SSE for portable on x86_64):
//! a probe that spills measures stores, not FMAs, and makes every "% of peak"
//! flattering. [`peak_gflops_asm`] is a second probe written independently, in inline
//! assembly, to check the first against.

mod probes;

use super::kernel::Isa;
use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// Measures single-thread f32 throughput of `isa` in GFLOP/s over about `duration`
/// (best of several rounds, after a warm-up). Run it on an otherwise idle core.
///
/// | path | what runs |
/// |---|---|
/// | `Avx512` | 16 chains of zmm `vfmadd231ps` |
/// | `Avx2` | 12 chains of ymm `vfmadd231ps` (14 of 16 registers) |
/// | `Neon` | 24 chains of `fmla v.4s` (26 of 32 registers) |
/// | `Portable` | 6 chains of 4-wide multiplies feeding 6 chains of adds (the portable kernel fuses nothing) |
///
/// # Errors
/// [`Error::Kernel`] when this CPU cannot run `isa`.
pub fn peak_gflops(isa: Isa, duration: Duration) -> Result<f64> {
    isa.check_available()?;
    let probe: fn(u64) -> (f32, u64) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => probes::avx512::fma_chains,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => probes::avx2::fma_chains,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => probes::neon::fma_chains,
        _ => probes::portable::fma_chains,
    };
    Ok(best_rate(duration, |iters| {
        let (folded, flops_per_iter) = probe(iters);
        std::hint::black_box(folded);
        flops_per_iter
    }))
}

/// A second peak probe, written independently of [`peak_gflops`]: `chains` (8 or 12)
/// FMA chains on fixed registers in an inline-assembly loop, so that no compiler
/// decision can change the figure. Available for the x86 paths (`Avx2`: ymm, `Avx512`:
/// zmm). The README reports how the two probes agree.
///
/// # Errors
/// [`Error::Kernel`] when this CPU cannot run `isa`, when the path has no assembly
/// probe, or when `chains` is not 8 or 12.
#[doc(hidden)]
pub fn peak_gflops_asm(isa: Isa, chains: usize, duration: Duration) -> Result<f64> {
    isa.check_available()?;
    let probe: Option<fn(u64) -> u64> = match (isa, chains) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 8) => Some(probes::avx2::fma_chains_asm::<8>),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 12) => Some(probes::avx2::fma_chains_asm::<12>),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 8) => Some(probes::avx512::fma_chains_asm::<8>),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 12) => Some(probes::avx512::fma_chains_asm::<12>),
        _ => None,
    };
    match probe {
        Some(probe) => Ok(best_rate(duration, probe)),
        None => Err(Error::Kernel(format!(
            "no assembly peak probe with {chains} chains for the {} path (there are 8 and 12 for avx2 and avx512)",
            isa.name()
        ))),
    }
}

/// Runs `probe(iters)` (which returns the flops per iteration) in rounds of about an
/// eighth of `duration` each and returns the best rate in GFLOP/s.
fn best_rate(duration: Duration, mut probe: impl FnMut(u64) -> u64) -> f64 {
    // Calibrate the iteration count to ~1/8 of the budget per round.
    let mut iters = 1u64 << 16;
    loop {
        let t = Instant::now();
        probe(iters);
        if t.elapsed() * 8 >= duration / 8 || iters >= 1 << 40 {
            break;
        }
        iters *= 2;
    }
    let mut best = 0.0f64;
    let end = Instant::now() + duration;
    while Instant::now() < end || best == 0.0 {
        let t = Instant::now();
        let flops_per_iter = probe(iters);
        let secs = t.elapsed().as_secs_f64();
        best = best.max((iters * flops_per_iter) as f64 / secs / 1e9);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_path_has_a_probe_and_unknown_asm_probes_are_errors() {
        let short = Duration::from_millis(5);
        for &isa in Isa::ALL {
            let peak = peak_gflops(isa, short);
            assert_eq!(peak.is_ok(), isa.is_available(), "{isa:?}");
            if let Ok(g) = peak {
                assert!(g.is_finite() && g > 0.0, "{isa:?}: {g}");
            }
        }
        assert!(matches!(peak_gflops_asm(Isa::Portable, 8, short), Err(Error::Kernel(_))));
        for isa in [Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.is_available()) {
            for chains in [8, 12] {
                let g = peak_gflops_asm(isa, chains, short).unwrap();
                assert!(g.is_finite() && g > 0.0, "{isa:?} {chains}: {g}");
            }
            let err = peak_gflops_asm(isa, 7, short).unwrap_err().to_string();
            assert!(err.contains("7 chains"), "{err}");
        }
    }
}
