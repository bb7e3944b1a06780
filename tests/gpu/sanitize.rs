//! One small launch of every kernel family, for `compute-sanitizer` (`scripts/gpu-sanitize.sh`):
//! dense, A-shape, vertical-slash and block-sparse attention on every engine and tile variant of
//! the device (hostile indices, packed batches and chunks of queries after a prefix included), the
//! tile choice, the vertical-slash converter, the score passes, both estimates and a whole prefill
//! layer, in one test per engine variant plus one for the index kernels (so the tools can run them
//! side by side). Sizes are small
//! so the sanitizer's tools finish in minutes; each launch is still checked against its reference.

use super::chunked::sanitizer_chunks;
use super::patterns::{
    banded_and_scattered_index, block_sparse_index, packed_offsets, run_block_sparse, run_vertical_slash,
    spec_override, variants, vertical_slash_index, IndexHead, Variant, VARIANT,
};
use super::{check_attention, describe, device, test_seed, Case, Packed, TOLERANCE};
use half::{bf16, f16};
use minf::codegen::Pattern;
use minf::estimate::gpu::{EstimateWorkspace, ScoresWorkspace};
use minf::vertical_slash::ConvertWorkspace;
use minf::{AShape, AttentionElement, Device, PatternArgs, PrefillOptions, TileChoice, Varlen};
use minf_testkit::reference::TestRng;

/// Dense (`pattern` Dense) or A-shape attention with `window` on `case` against the reference,
/// reported and added to `failures` when over tolerance.
fn check_window<T: AttentionElement>(
    device: &Device,
    case: &Case,
    seed: u64,
    pattern: Pattern,
    window: AShape,
    failures: &mut Vec<String>,
) {
    let (args, AShape { n_init, n_local }) = match pattern {
        Pattern::AShape => (PatternArgs::AShape(window), window),
        _ => (PatternArgs::Dense, AShape { n_init: usize::MAX, n_local: usize::MAX }),
    };
    let visible = move |_: usize, _: usize, i: usize, j: usize| j <= i && (j < n_init || i - j < n_local);
    let spec = spec_override::<T>(device, pattern, case);
    let o = check_attention::<T>(device, case, seed, spec, args, None, &visible);
    let ok = o.out_error <= TOLERANCE && o.lse_error <= 1e-2;
    let what = format!("{:?} {pattern:?} {}", VARIANT.get(), describe::<T>(case));
    println!("{} {what}: rel_l2 {:.2e}", if ok { "ok  " } else { "FAIL" }, o.out_error);
    if !ok {
        failures.push(what);
    }
}

fn attention_families<T: AttentionElement>(device: &Device, rng: &mut TestRng, seed: u64, failures: &mut Vec<String>) {
    let head_dims: &[usize] = if T::DTYPE == minf::codegen::DType::Bf16 { &[64, 128, 256] } else { &[128] };
    for head_dim in sweep_head_dims(head_dims) {
        let case = Case { batch: 2, seq: 300, heads: 4, kv_heads: 2, head_dim, bhsd: head_dim == 64 };
        for pattern in [Pattern::Dense, Pattern::AShape] {
            check_window::<T>(device, &case, seed, pattern, AShape { n_init: 16, n_local: 100 }, failures);
        }
        for hostile in [false, true] {
            let label = if hostile { "vertical_slash hostile" } else { "vertical_slash" };
            let index = vertical_slash_index(rng, case.batch, case.heads, &[case.seq; 2], hostile);
            run_vertical_slash::<T>(device, &case, seed + 1, &index, None, label, failures, None);
            let index = block_sparse_index(rng, case.batch, case.heads, &[case.seq; 2], hostile);
            run_block_sparse::<T>(device, &case, seed + 2, &index, None, hostile, failures);
        }
    }
    // Packed sequences of different lengths, on the index-driven kernels.
    let lens = [300, 70];
    let offsets = packed_offsets(&lens);
    let cu: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
    let varlen = Varlen::new(device, &cu, &cu).expect("varlen");
    let case = Case { batch: 1, seq: offsets[2], heads: 4, kv_heads: 2, head_dim: 128, bhsd: false };
    let packed = Packed { varlen: &varlen, offsets };
    let index = vertical_slash_index(rng, 2, 4, &lens, false);
    run_vertical_slash::<T>(device, &case, seed + 3, &index, Some(&packed), "vertical_slash varlen", failures, None);
    let index = block_sparse_index(rng, 2, 4, &lens, false);
    run_block_sparse::<T>(device, &case, seed + 4, &index, Some(&packed), false, failures);
    // Chunks of every pattern: queries after a prefix, alone and packed with different prefixes.
    sanitizer_chunks::<T>(device, rng, seed + 5, failures);
}

/// The sweep's head dims out of `all`: those `MINF_TEST_HEAD_DIMS` names (e.g. `128` or `64,128`),
/// else all of them. Under racecheck one engine's whole sweep runs past 110 s (H100), so a run that
/// checks one kernel family names the dims it needs (docs/testing.md).
fn sweep_head_dims(all: &[usize]) -> Vec<usize> {
    let Ok(names) = std::env::var("MINF_TEST_HEAD_DIMS") else { return all.to_vec() };
    let wanted: Vec<usize> = names
        .split(',')
        .map(|name| name.trim().parse().unwrap_or_else(|_| panic!("MINF_TEST_HEAD_DIMS: {name:?} is not a number")))
        .collect();
    let dims: Vec<usize> = all.iter().copied().filter(|d| wanted.contains(d)).collect();
    println!("MINF_TEST_HEAD_DIMS: head dims {dims:?} of {all:?}");
    dims
}

/// Attention of every pattern on `variant`'s kernels (skipped where the device has no such
/// variant); bf16 on three head dims, f16 on the default kernels.
fn attention_sweep(variant: Variant) {
    let device = device();
    if !variants(&device, Pattern::VerticalSlash).contains(&variant) {
        println!("skipped: {variant:?} does not run on {}", device.arch());
        return;
    }
    let seed = test_seed(&format!("sanitizer sweep {variant:?}"));
    let mut rng = TestRng::new(seed);
    let mut failures = Vec::new();
    VARIANT.set(variant);
    attention_families::<bf16>(&device, &mut rng, seed, &mut failures);
    if variant == Variant::Default {
        attention_families::<f16>(&device, &mut rng, seed, &mut failures);
    }
    VARIANT.set(Variant::Default);
    assert!(failures.is_empty(), "over tolerance (seed {seed}): {failures:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_default_kernels() {
    attention_sweep(Variant::Default);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_two_row_blocks() {
    attention_sweep(Variant::TwoRowBlocks);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma() {
    attention_sweep(Variant::Wgmma);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma_two_row_blocks() {
    attention_sweep(Variant::WgmmaTwoRowBlocks);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma_square() {
    attention_sweep(Variant::WgmmaSquare);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_mma_sync() {
    attention_sweep(Variant::MmaSync);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma_tma() {
    attention_sweep(Variant::WgmmaTma);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma_tma_two_row_blocks() {
    attention_sweep(Variant::WgmmaTmaTwoRowBlocks);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma_tma_square() {
    attention_sweep(Variant::WgmmaTmaSquare);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma_tma_pingpong() {
    attention_sweep(Variant::WgmmaTmaPingPong);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_wgmma_tma_overlap() {
    attention_sweep(Variant::WgmmaTmaOverlap);
}

/// The persistent kernels on one and on three blocks, each block walking dozens of work items
/// (`patterns::persistent_walk_differences`): the carried stage ring and the two Q buffers.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_persistent_walk() {
    super::patterns::assert_persistent_walks_equal("sanitizer sweep (persistent walk)");
}

/// The index kernels and a whole prefill layer.
#[test]
#[ignore = "needs a CUDA GPU"]
fn index_kernels_and_prefill() {
    let device = device();
    let seed = test_seed("sanitizer sweep (index kernels)");
    let mut rng = TestRng::new(seed);
    let mut failures = Vec::new();

    // The tile choice and both of its launches, each with heads (choosing from 0 rows: one busy
    // banded head on 128-row blocks, one scattered on 64-row), then the default, under which an
    // index of so few rows runs on the default tile unchosen.
    let case = Case { batch: 1, seq: 8192, heads: 2, kv_heads: 1, head_dim: 128, bhsd: false };
    let index = banded_and_scattered_index(&mut rng, case.seq, &[IndexHead::Scattered, IndexHead::Banded(96)]);
    let mut choice = TileChoice::new(&device, &[1, 0], case.heads).expect("tile choice");
    let default_rows = choice.choose_from_rows();
    for choose_from_rows in [0, default_rows] {
        choice.set_choose_from_rows(choose_from_rows);
        let label = format!("tile choice from {choose_from_rows} rows");
        run_vertical_slash::<bf16>(&device, &case, seed + 5, &index, None, &label, &mut failures, Some(&mut choice));
    }

    // The converter, byte for byte against its CPU model.
    let mut workspace = ConvertWorkspace::new();
    for inputs in [
        super::convert::Inputs::raw(&mut rng, &[300, 129], 3, 200, 250),
        super::convert::Inputs::minference(&mut rng, 700, 4, 100, 300),
    ] {
        let got = super::convert::gpu(&device, &inputs, &mut workspace).to_host().expect("download");
        super::convert::assert_same(&got, &inputs.cpu(), &inputs.describe());
    }

    // The score passes and both estimates.
    let mut scores = ScoresWorkspace::new();
    let error = super::estimate::check_case::<bf16>(&device, &mut scores, 300, 128, seed);
    println!("scores: worst rel_l2 {error:.2e}");
    let mut estimate = EstimateWorkspace::new();
    super::estimate::vertical_slash_case::<bf16>(&device, &mut estimate, (1, 700, 4, 2, 128), seed + 6);
    // Three 4096-score segments per top-k row: the passes' cross-block histograms and counts.
    super::estimate::vertical_slash_case::<bf16>(&device, &mut estimate, (1, 9000, 2, 1, 64), seed + 12);
    super::estimate::block_sparse_case::<bf16>(&device, &mut estimate, (700, 6, 2, 128, 3), seed + 7);
    // Several 128-block score tiles at head_dim 96, partial last tiles, the score matrices one
    // (batch, head) pair at a time; a chunk whose prefix spans three key tiles.
    let mut grouped = EstimateWorkspace::new();
    grouped.limit_block_scores(1);
    super::estimate::block_sparse_case::<bf16>(&device, &mut grouped, (9000, 4, 2, 96, 100), seed + 13);
    super::estimate::block_sparse_chunk_case::<bf16>(&device, &mut grouped, (300, 17_000, 4, 2, 128, 100), seed + 14);
    // More key blocks than the short selection takes: the streaming one.
    super::estimate::block_sparse_case::<bf16>(&device, &mut grouped, (133_000, 1, 1, 64, 100), seed + 15);

    // A whole layer of every pattern through the prefill (estimation, conversion, launches).
    let options = PrefillOptions { dense_below: 0, dense_chunks_below: 0, ..PrefillOptions::default() };
    let mut prefill =
        minf::Prefill::new(&device, &super::prefill::config(), super::prefill::SHAPE, options).expect("prefill");
    let error = super::prefill::check_layer(&device, &mut prefill, 1, 700, seed + 8);
    println!("prefill layer 1: rel_l2 {error:.2e}");
    if error > TOLERANCE {
        failures.push(format!("prefill layer 1: rel_l2 {error:.2e}"));
    }

    // Chunks after a prefix that is not a multiple of 64: both estimates (fewer than 64 queries,
    // and a partial last row block), the chunk converter, and a layer through prefill_chunk.
    super::estimate::vertical_slash_chunk_case::<bf16>(&device, &mut estimate, (63, 37, 4, 2, 128), seed + 9);
    super::estimate::block_sparse_chunk_case::<bf16>(&device, &mut estimate, (65, 100, 4, 2, 128, 3), seed + 10);
    let (error, lse_error) = super::prefill::check_chunk(&device, &mut prefill, 1, (65, 637), seed + 11);
    println!("prefill_chunk layer 1: rel_l2 {error:.2e}, LSE rel_l2 {lse_error:.2e}");
    if error > TOLERANCE || lse_error > 1e-3 {
        failures.push(format!("prefill_chunk layer 1: rel_l2 {error:.2e}, LSE rel_l2 {lse_error:.2e}"));
    }
    assert!(failures.is_empty(), "over tolerance (seed {seed}): {failures:?}");
}
