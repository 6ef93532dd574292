//! The FMA-chain probes of each path, which [`super::peak_gflops`] and
//! [`super::peak_gflops_asm`] time: independent chains that never touch memory, as
//! many as hide the FMA latency and as few as fit the path's registers.

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// Single-core throughput probe: 12 independent ymm FMA chains. Zen 3/4/5 and Intel
    /// cores since Haswell run two 256-bit FMA pipes with a latency of 4–5 cycles, so 8–10
    /// chains in flight keep both busy; 12 chains plus the two constants use 14 of the 16
    /// ymm registers, so nothing spills (the k loop of the disassembly is 12 `vfmadd231ps`
    /// on registers and a counter). The earlier 16-chain probe spilled and read half of
    /// the real peak.
    pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
        assert!(crate::gemm::Isa::Avx2.is_available(), "fma_chains: avx2+fma not available");
        // SAFETY: avx2 and fma were checked just above.
        unsafe { fma_chains_impl(iters) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_chains_impl(iters: u64) -> (f32, u64) {
        const CHAINS: usize = 12;
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        let x = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let y = _mm256_set1_ps(std::hint::black_box(1e-7));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut lanes = [0.0f32; 8];
        let total = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        // SAFETY: `lanes` holds exactly the 8 floats one ymm store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        (lanes.iter().sum(), (CHAINS * 8 * 2) as u64)
    }

    /// The second, independently written probe: `CHAINS` (8 or 12) `vfmadd231ps` on fixed
    /// ymm registers in an inline-assembly loop, so that no compiler decision (spills,
    /// scheduling) can touch the figure. Zero operands: the values never change and no
    /// denormal ever appears. Returns the flops per iteration.
    pub(crate) fn fma_chains_asm<const CHAINS: usize>(iters: u64) -> u64 {
        assert!(crate::gemm::Isa::Avx2.is_available(), "fma_chains_asm: avx2+fma not available");
        // SAFETY: avx2 and fma were checked just above.
        unsafe { fma_chains_asm_impl::<CHAINS>(iters.max(1)) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_chains_asm_impl<const CHAINS: usize>(iters: u64) -> u64 {
        macro_rules! probe {
            ($($r:literal),*) => {
                // SAFETY: register-only arithmetic on the registers declared clobbered;
                // the loop counter is a register operand and `iters ≥ 1`.
                unsafe {
                    std::arch::asm!(
                        "vxorps ymm14, ymm14, ymm14",
                        "vxorps ymm15, ymm15, ymm15",
                        $(concat!("vxorps ymm", $r, ", ymm", $r, ", ymm", $r),)*
                        "2:",
                        $(concat!("vfmadd231ps ymm", $r, ", ymm14, ymm15"),)*
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iters => _,
                        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                        out("ymm14") _, out("ymm15") _,
                        options(nomem, nostack),
                    )
                }
            };
        }
        match CHAINS {
            8 => probe!(0, 1, 2, 3, 4, 5, 6, 7),
            12 => probe!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
            _ => panic!("fma_chains_asm: 8 or 12 chains, got {CHAINS}"),
        }
        (CHAINS * 8 * 2) as u64
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    /// Single-core throughput probe: 16 independent zmm FMA chains (Zen 4 needs 4 in
    /// flight, Zen 5 needs 8). Returns the folded result and the flops per iteration.
    pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
        assert!(crate::gemm::Isa::Avx512.is_available(), "fma_chains: avx512f not available");
        // SAFETY: avx512f was checked just above.
        unsafe { fma_chains_impl(iters) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma_chains_impl(iters: u64) -> (f32, u64) {
        let mut acc = [_mm512_set1_ps(1.0); 16];
        let x = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let y = _mm512_set1_ps(std::hint::black_box(1e-7));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        let total = acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        (_mm512_reduce_add_ps(total), 16 * 16 * 2)
    }

    /// The second, independently written probe: `CHAINS` (8 or 12) `vfmadd231ps` on fixed
    /// zmm registers in an inline-assembly loop (see `avx2::fma_chains_asm`). Returns the
    /// flops per iteration.
    pub(crate) fn fma_chains_asm<const CHAINS: usize>(iters: u64) -> u64 {
        assert!(crate::gemm::Isa::Avx512.is_available(), "fma_chains_asm: avx512f not available");
        // SAFETY: avx512f was checked just above.
        unsafe { fma_chains_asm_impl::<CHAINS>(iters.max(1)) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma_chains_asm_impl<const CHAINS: usize>(iters: u64) -> u64 {
        macro_rules! probe {
            ($($r:literal),*) => {
                // SAFETY: register-only arithmetic on the registers declared clobbered;
                // the loop counter is a register operand and `iters ≥ 1`.
                unsafe {
                    std::arch::asm!(
                        "vpxord zmm14, zmm14, zmm14",
                        "vpxord zmm15, zmm15, zmm15",
                        $(concat!("vpxord zmm", $r, ", zmm", $r, ", zmm", $r),)*
                        "2:",
                        $(concat!("vfmadd231ps zmm", $r, ", zmm14, zmm15"),)*
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iters => _,
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                        out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                        out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                        out("zmm14") _, out("zmm15") _,
                        options(nomem, nostack),
                    )
                }
            };
        }
        match CHAINS {
            8 => probe!(0, 1, 2, 3, 4, 5, 6, 7),
            12 => probe!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
            _ => panic!("fma_chains_asm: 8 or 12 chains, got {CHAINS}"),
        }
        (CHAINS * 16 * 2) as u64
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) mod neon {
    use std::arch::aarch64::*;

    /// Single-core throughput probe: 24 independent chains of `fmla v.4s` (4-pipe cores
    /// need 16 in flight at 4 cycles of latency); with the two constants 26 of the 32
    /// vector registers.
    pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
        const CHAINS: usize = 24;
        // SAFETY: register-only arithmetic; NEON is part of the aarch64 baseline.
        unsafe {
            let x = vdupq_n_f32(std::hint::black_box(0.999_999));
            let y = vdupq_n_f32(std::hint::black_box(1e-7));
            let mut acc = [vdupq_n_f32(1.0); CHAINS];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = vfmaq_f32(y, *a, x);
                }
            }
            let total = acc.iter().fold(vdupq_n_f32(0.0), |s, &a| vaddq_f32(s, a));
            (vaddvq_f32(total), (CHAINS * 4 * 2) as u64)
        }
    }
}

pub(super) mod portable {
    /// Single-core f32 throughput probe for the portable path, which compiles to separate
    /// 4-wide multiplies and adds (SSE2 `mulps` + `addps` on x86_64, NEON `fmul` + `fadd`
    /// on aarch64: Rust never fuses them). As in the kernel, the multiplies and the adds
    /// sit on different dependency chains: 6 chains `t = t·x` (x = 1, so nothing grows or
    /// decays into denormals) feed 6 chains `s = s + t`. With 3–4 cycles of latency per
    /// instruction that keeps two multiply and two add pipes busy; the 12 chains and the
    /// constant use 13 of the 16 SSE registers, so nothing spills. (A chain `a = a·x + y`
    /// puts both on one chain and read 20% low.) Written with the baseline intrinsics,
    /// because LLVM turned the same loop over plain arrays into shuffles and stack traffic.
    /// Returns a value that depends on every chain, so that no work is optimised away.
    pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
        const CHAINS: usize = 6;
        let x = std::hint::black_box(1.0f32);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: register-only arithmetic; SSE is part of the x86_64 baseline.
        let folded = unsafe {
            use std::arch::x86_64::*;
            let xv = _mm_set1_ps(x);
            let mut t = [_mm_set1_ps(1.0); CHAINS];
            let mut s = [_mm_setzero_ps(); CHAINS];
            for _ in 0..iters {
                for (t, s) in t.iter_mut().zip(s.iter_mut()) {
                    *t = _mm_mul_ps(*t, xv);
                    *s = _mm_add_ps(*s, *t);
                }
            }
            _mm_cvtss_f32(s.iter().fold(_mm_setzero_ps(), |a, &b| _mm_add_ps(a, b)))
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: register-only arithmetic; NEON is part of the aarch64 baseline.
        let folded = unsafe {
            use std::arch::aarch64::*;
            let xv = vdupq_n_f32(x);
            let mut t = [vdupq_n_f32(1.0); CHAINS];
            let mut s = [vdupq_n_f32(0.0); CHAINS];
            for _ in 0..iters {
                for (t, s) in t.iter_mut().zip(s.iter_mut()) {
                    *t = vmulq_f32(*t, xv);
                    *s = vaddq_f32(*s, *t);
                }
            }
            vaddvq_f32(s.iter().fold(vdupq_n_f32(0.0), |a, &b| vaddq_f32(a, b)))
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let folded = {
            let (mut t, mut s) = ([1.0f32; CHAINS * 4], [0.0f32; CHAINS * 4]);
            for _ in 0..iters {
                for (t, s) in t.iter_mut().zip(s.iter_mut()) {
                    *t *= x;
                    *s += *t;
                }
            }
            s.iter().sum()
        };
        (folded, (CHAINS * 4 * 2) as u64)
    }
}
