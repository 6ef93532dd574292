//! Every blocking decision of the GEMM in one place, and what each one cuts.
//!
//! The driver runs the BLIS loops in the order jc → pc → ic → ir → jr, with the
//! register tile innermost. Inside one (jc, pc) block the packed B block (`KC × NC`)
//! is reused by every row panel, so it is sized for L2; one A micro-panel (`MR × KC`)
//! is reused across the whole `jr` sweep, so it is sized for L1. This is the AOCL
//! zen4/zen5 "sup" arrangement (B streamed from L2, A micro-panel in L1).
//!
//! The block sizes are derived per kernel from the L1d and L2 sizes of the CPU
//! ([`CacheSizes::detected`]): a 512 KiB packed B block, right for the 1 MiB L2 of a
//! Zen 4, is all of a Zen 3's L2. They never depend on the thread count, so results
//! stay bit-identical for any number of threads on one machine; between machines
//! with different caches the k split (and so the last bits of a sum) may differ, as
//! with any BLAS.

use std::sync::OnceLock;

/// The per-core data cache sizes the block sizes are derived from, in bytes. Made by
/// [`CacheSizes::new`] or [`CacheSizes::detected`] (`#[non_exhaustive]`: a cache level
/// may be added).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheSizes {
    /// Level-1 data cache of one core.
    pub l1d: usize,
    /// Level-2 cache of one core (or its share, where a cluster of cores shares one).
    pub l2: usize,
}

impl CacheSizes {
    /// A core with `l1d` bytes of level-1 data cache and `l2` bytes of level-2 cache.
    pub const fn new(l1d: usize, l2: usize) -> Self {
        CacheSizes { l1d, l2 }
    }

    /// Used when the CPU does not report its caches: the smallest of the common
    /// desktop and server cores (Zen 1–3, Skylake client), so that blocks never
    /// overflow a real cache.
    pub const FALLBACK: CacheSizes = CacheSizes { l1d: 32 * 1024, l2: 512 * 1024 };

    /// This CPU's caches, read once per process: CPUID on x86_64 (AMD leaves
    /// 0x8000_0005/6, Intel leaf 4), `/sys/devices/system/cpu/cpu0/cache` on other
    /// Linux targets, else [`CacheSizes::FALLBACK`]. Values outside a plausible range
    /// (L1d 8 KiB – 1 MiB, L2 64 KiB – 16 MiB) are replaced by the fallback's.
    pub fn detected() -> CacheSizes {
        static DETECTED: OnceLock<CacheSizes> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let raw = detect();
            CacheSizes {
                l1d: raw.l1d.filter(|s| (8 << 10..=1 << 20).contains(s)).unwrap_or(Self::FALLBACK.l1d),
                l2: raw.l2.filter(|s| (64 << 10..=16 << 20).contains(s)).unwrap_or(Self::FALLBACK.l2),
            }
        })
    }
}

/// The block sizes of one kernel on one machine (a report: `#[non_exhaustive]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Blocking {
    /// Largest k block (the depth of one packed panel pair). k is split into
    /// `ceil(k / kc)` equal blocks rather than `kc + remainder`, so k = 784 with
    /// kc = 512 runs as two blocks of 392.
    pub kc: usize,
    /// Largest m block: rows of A packed at once (a multiple of the kernel's MR).
    pub mc: usize,
    /// Largest n block: columns of B packed at once (a multiple of the kernel's NR).
    pub nc: usize,
}

/// The deepest k block: beyond it a longer k loop gains nothing and the C tile is
/// revisited less often than its packing costs.
pub(crate) const KC_MAX: usize = 512;
/// The shallowest k block worth a packing pass.
const KC_MIN: usize = 64;
/// The A block height, rounded down to a multiple of MR: 144 is one of 4, 6, 8 and 16.
const MC_TARGET: usize = 144;
/// The widest B block, whatever the L2 (BLIS's zen3 NC is 4080).
const NC_MAX: usize = 4096;

impl Blocking {
    /// The block sizes for an `mr × nr` kernel with these caches:
    /// - `kc`: the A micro-panel (`mr × kc` floats) fills at most half of L1d, leaving
    ///   the other half to the B rows streaming past it, within 64..=512. The B
    ///   micro-panel is not kept in L1 beside it (BLIS's haswell kc = 256 does that):
    ///   it streams from L2 either way, and a deeper k block halves the loads and
    ///   stores of each C tile.
    /// - `nc`: the packed B block (`kc × nc` floats) fills at most half of L2, leaving
    ///   room for C and A lines; a multiple of `nr`, at least `nr`, at most 4096.
    /// - `mc`: 144 rows rounded down to a multiple of `mr` (at least `mr`).
    ///
    /// Zen 4 (32 KiB / 1 MiB) gets kc × nc = 512 × 256 for both the AVX-512 6 × 64 and
    /// the AVX2 6 × 16 kernel; Zen 3 (32 KiB / 512 KiB) 512 × 128 for AVX2.
    pub fn for_kernel(mr: usize, nr: usize, caches: CacheSizes) -> Blocking {
        assert!(mr > 0 && nr > 0, "kernel tile must be non-empty");
        let kc = (caches.l1d / 2 / (mr * 4)).clamp(KC_MIN, KC_MAX);
        let nc = ((caches.l2 / 2 / (kc * 4)) / nr * nr).clamp(nr, NC_MAX.max(nr));
        let mc = (MC_TARGET / mr).max(1) * mr;
        Blocking { kc, mc, nc }
    }

    /// Number of equal k blocks `k` is split into (at least 1, so that k = 0 still
    /// produces one, empty, block).
    pub fn k_blocks(&self, k: usize) -> usize {
        k.div_ceil(self.kc).max(1)
    }
}

/// Start of k block `b` out of `nb` over `0..k`.
pub fn k_block_start(k: usize, nb: usize, b: usize) -> usize {
    b * k / nb
}

/// A row-major B is read in place (not packed) by kernels that mask their B loads
/// when the task has at most this many rows of C, or n fits in one tile: a packed B
/// block is reused by every MR-row panel, so packing pays only when there are many.
pub const DIRECT_B_MAX_ROWS: usize = 256;

/// ... or, for the AVX-512 rule (`Kernel::b_in_place`: four adjacent lines of a B row
/// per k step), B rows up to 2 KiB apart when the product runs as one task of at most
/// this many rows. On the AVX-512 Xeon of docs/perf/input-map-2026-12-07.md, in place
/// against packed: 128×512×512 77–80% of peak against 67–68%, 32×784×512 63% against
/// 52%, 8×784×512 41% against 24%; but 256×512×512 71% against 77%, rows 2.5–4 KiB
/// apart (n = 640 … 1024) 36–67% against 64–68%, and in a 2-thread step, where B (the
/// weights) was just written half by the other core, the packing's streaming read beat
/// the tiles' strided one (784-512-512-10 2% slower a step in place).
pub const DIRECT_B_WIDE_MAX_ROWS: usize = 128;

/// ... or when all of B fits in a quarter of L2 (256 KiB), where re-reading it costs
/// no more than reading a packed copy: dW1 = Xᵀ·dZ (784×128×128, B = dZ of 64 KiB).
pub const DIRECT_B_MAX_FLOATS: usize = 64 * 1024;

/// Whether the `kc` k steps of an `Aᵀ` read in place stay in an L2 of `l2` bytes: the
/// tile reads one cache line per step, `stride` floats after the last. Lines a large
/// power of two apart share few sets: 4 KiB apart (the input of a 1024-wide layer), a
/// cache of S sets of W ways keeps W·S / 64 of them, 512 in 2 MiB, whatever its
/// associativity. Beyond half of that the panel thrashes on every column tile (dW of
/// 1024 × 512 × 1024 ran at 31% of the AVX-512 peak in place, 65% packed); such an `Aᵀ`
/// is packed instead.
pub(crate) fn transposed_a_stays_in_l2(stride: usize, kc: usize, l2: usize) -> bool {
    let bytes = stride.saturating_mul(4);
    if bytes == 0 {
        return true;
    }
    let period = (1usize << bytes.trailing_zeros()).max(64);
    kc <= l2 / period / 2
}

/// A GEMM gets one task per this many multiply-adds (up to the thread count); below
/// it, it runs on the calling thread: a rayon fork/join costs as much as a small
/// product takes (swept with `examples/gemm --min-work`). Override per call with
/// `GemmOptions::min_work_per_thread`.
pub const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// Largest `MR × NR` over all kernels: the size of the stack tile used when C or the
/// ReLU-mask activation has a non-unit column stride.
pub const MAX_TILE: usize = 16 * 64;

/// What the caches report, before the plausibility check.
struct RawCaches {
    l1d: Option<usize>,
    l2: Option<usize>,
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn detect() -> RawCaches {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY (every cpuid below): the cpuid instruction exists on every x86_64 CPU
    // and only reads identification registers; leaves above the reported maximum are
    // never queried. (Safe to call since Rust 1.94; the block keeps MSRV 1.89.)
    #[allow(unused_unsafe)]
    let cpuid = |leaf: u32, sub: u32| unsafe { __cpuid_count(leaf, sub) };
    let vendor = cpuid(0, 0);
    let max_leaf = vendor.eax;
    let is_amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163); // "AuthenticAMD"
    if is_amd {
        let max_ext = cpuid(0x8000_0000, 0).eax;
        let l1d = (max_ext >= 0x8000_0005).then(|| (cpuid(0x8000_0005, 0).ecx >> 24) as usize * 1024);
        let l2 = (max_ext >= 0x8000_0006).then(|| (cpuid(0x8000_0006, 0).ecx >> 16) as usize * 1024);
        return RawCaches { l1d, l2 };
    }
    // Intel (and others that follow it): deterministic cache parameters, leaf 4.
    let mut caches = RawCaches { l1d: None, l2: None };
    if max_leaf >= 4 {
        for sub in 0..16 {
            let r = cpuid(4, sub);
            let kind = r.eax & 0x1f; // 0 = no more caches, 1 = data, 2 = instruction, 3 = unified
            if kind == 0 {
                break;
            }
            let level = (r.eax >> 5) & 0x7;
            let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
            let partitions = ((r.ebx >> 12) & 0x3ff) as usize + 1;
            let line = (r.ebx & 0xfff) as usize + 1;
            let sets = r.ecx as usize + 1;
            let size = ways * partitions * line * sets;
            match (level, kind) {
                (1, 1) | (1, 3) => caches.l1d = Some(size),
                (2, 1) | (2, 3) => caches.l2 = Some(size),
                _ => {}
            }
        }
    }
    caches
}

#[cfg(all(not(target_arch = "x86_64"), target_os = "linux", not(miri)))]
fn detect() -> RawCaches {
    // /sys/devices/system/cpu/cpu0/cache/indexN/{level,type,size}, size like "64K".
    let mut caches = RawCaches { l1d: None, l2: None };
    for n in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{n}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok().map(|s| s.trim().to_string());
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        let bytes = parse_size(&size);
        match (level.as_str(), kind.as_str()) {
            ("1", "Data") | ("1", "Unified") => caches.l1d = bytes,
            ("2", "Data") | ("2", "Unified") => caches.l2 = bytes,
            _ => {}
        }
    }
    caches
}

// Under miri (which runs no `cpuid` and reads no sysfs) and on other systems.
#[cfg(any(miri, not(any(target_arch = "x86_64", target_os = "linux"))))]
fn detect() -> RawCaches {
    RawCaches { l1d: None, l2: None }
}

/// Parses a sysfs cache size such as "48K" or "1M" (or plain bytes).
#[cfg_attr(any(miri, target_arch = "x86_64", not(target_os = "linux")), allow(dead_code))]
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" | "KB" | "KiB" => Some(n << 10),
        "M" | "MB" | "MiB" => Some(n << 20),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_a_is_packed_where_its_steps_alias_in_l2() {
        let l2 = 2 << 20;
        // 1024 floats (4 KiB) apart: 512 lines stay, so up to 256 steps in place.
        assert!(transposed_a_stays_in_l2(1024, 256, l2));
        assert!(!transposed_a_stays_in_l2(1024, 257, l2));
        assert!(!transposed_a_stays_in_l2(2048, 256, l2));
        assert!(transposed_a_stays_in_l2(2048, 128, l2));
        // 784 and 1000 floats apart spread over every set.
        assert!(transposed_a_stays_in_l2(784, 512, l2));
        assert!(transposed_a_stays_in_l2(1000, 512, l2));
        // Half the L2, half the steps; a Zen 4's 1 MiB at 4 KiB keeps 256 lines.
        assert!(!transposed_a_stays_in_l2(1024, 256, 1 << 20));
        assert!(transposed_a_stays_in_l2(1024, 128, 1 << 20));
        assert!(transposed_a_stays_in_l2(0, 512, l2));
        assert!(transposed_a_stays_in_l2(usize::MAX, 512, l2));
    }

    #[test]
    fn blocks_follow_the_caches() {
        let zen3 = CacheSizes { l1d: 32 << 10, l2: 512 << 10 };
        let zen4 = CacheSizes { l1d: 32 << 10, l2: 1 << 20 };
        let zen5 = CacheSizes { l1d: 48 << 10, l2: 1 << 20 };
        // kc from the A micro-panel in half of L1d (capped at 512), the packed B block
        // in half of L2.
        assert_eq!(Blocking::for_kernel(6, 64, zen4), Blocking { kc: 512, mc: 144, nc: 256 });
        assert_eq!(Blocking::for_kernel(6, 16, zen3), Blocking { kc: 512, mc: 144, nc: 128 });
        assert_eq!(Blocking::for_kernel(6, 16, zen4), Blocking { kc: 512, mc: 144, nc: 256 });
        assert_eq!(Blocking::for_kernel(6, 16, zen5), Blocking { kc: 512, mc: 144, nc: 256 });
        // AVX-512 16 × 16: 16 × kc floats in half of a 32 KiB L1d.
        assert_eq!(Blocking::for_kernel(16, 16, zen4).kc, 256);
        // NEON 12 × 8: 16 KiB / 48 B on a 32 KiB L1d; nc a multiple of 8, mc of 12.
        let b = Blocking::for_kernel(12, 8, zen4);
        assert_eq!((b.kc, b.mc, b.nc % 8), (341, 144, 0));
        // A small L1d gives a shallow k block, floored at 64.
        assert_eq!(Blocking::for_kernel(16, 16, CacheSizes { l1d: 4 << 10, l2: 64 << 10 }).kc, 64);
        for (mr, nr) in crate::gemm::kernel::KERNEL_TILES {
            for caches in [zen3, zen4, zen5, CacheSizes { l1d: 8 << 10, l2: 64 << 10 }] {
                let b = Blocking::for_kernel(mr, nr, caches);
                assert!(
                    b.mc.is_multiple_of(mr) && b.nc.is_multiple_of(nr) && b.nc >= nr,
                    "{mr}x{nr} {caches:?}: {b:?}"
                );
                assert!((KC_MIN..=KC_MAX).contains(&b.kc), "{b:?}");
                assert!(b.kc * b.nc * 4 <= caches.l2 / 2 || b.nc == nr, "{mr}x{nr} {caches:?}: {b:?}");
            }
        }
    }

    #[test]
    fn detected_caches_are_plausible() {
        let c = CacheSizes::detected();
        assert!((8 << 10..=1 << 20).contains(&c.l1d) && (64 << 10..=16 << 20).contains(&c.l2), "{c:?}");
        eprintln!("detected caches: {c:?}");
    }

    #[test]
    fn sysfs_sizes_parse() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("1M\n"), Some(1 << 20));
        assert_eq!(parse_size("32768"), Some(32768));
        assert_eq!(parse_size("12 Q"), None);
    }
}
