//! The MNIST IDX validation: any bytes are a clean `Ok` or `Err`, never a panic, and
//! nothing is allocated on a header's word. The first byte picks the kind and the
//! second the count the caller expects (small, so that valid files are reachable).
#![no_main]

use fusegrad::data::mnist::{validate_idx_bytes, IdxKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (Some(&kind), Some(&count)) = (data.first(), data.get(1)) else { return };
    let kind = if kind % 2 == 0 { IdxKind::Labels } else { IdxKind::Images };
    let _ = validate_idx_bytes(&data[2..], kind, count as usize % 4);
});
