//! GPU tests of the vertical-slash scores (`minf::estimate::gpu::vertical_slash_scores_gpu`):
//! every (batch, head)'s vertical and slash arrays against the f64 CPU reference
//! (`minf_testkit::estimate::vertical_slash_scores`) on structured inputs, and the time at 128K.

use super::{device, test_seed};
use half::{bf16, f16};
use minf::estimate::gpu::{vertical_slash_scores_gpu, ScoresWorkspace};
use minf::timing::median_ms;
use minf::{AttentionElement, Device, TensorRef};
use minf_testkit::estimate::vertical_slash_scores;
use minf_testkit::inputs::{InputSpec, StructuredInputs};
use minf_testkit::reference::{relative_l2, ReferenceShape};

/// fp32 scores against the f64 reference, on identical (rounded) inputs.
const SCORES_TOLERANCE: f64 = 1e-3;

/// Two sequences of structured inputs (`seed`, `seed + 1`), rounded to `T`: the stored values and
/// their f32 widening, both `[2, seq, heads | kv_heads, head_dim]`.
fn inputs<T: AttentionElement>(
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    seed: u64,
) -> (Vec<T>, Vec<T>, Vec<f32>, Vec<f32>) {
    let (mut q, mut k) = (Vec::new(), Vec::new());
    for s in [seed, seed + 1] {
        let qkv = StructuredInputs::generate(&InputSpec::new(seq, heads, kv_heads, head_dim, s))
            .unwrap_or_else(|e| panic!("structured inputs for seq {seq}: {e}"));
        q.extend(qkv.q.into_iter().map(T::from_f32));
        k.extend(qkv.k.into_iter().map(T::from_f32));
    }
    let widen = |x: &[T]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
    let (qf, kf) = (widen(&q), widen(&k));
    (q, k, qf, kf)
}

/// Runs one case and returns the worst relative L2 over every (batch, head) and both arrays.
pub(super) fn check_case<T: AttentionElement>(
    device: &Device,
    workspace: &mut ScoresWorkspace,
    seq: usize,
    head_dim: usize,
    seed: u64,
) -> f64 {
    let (batch, heads, kv_heads) = (2, 8, 2);
    let (q_host, k_host, q_f32, k_f32) = inputs::<T>(seq, heads, kv_heads, head_dim, seed);
    let stream = device.stream();
    let q = stream.clone_htod(&q_host).expect("upload q");
    let k = stream.clone_htod(&k_host).expect("upload k");
    let len = batch * heads * seq;
    // Poison: every element must be written (slash is zeroed by the launcher, vertical is not).
    let mut vertical = stream.clone_htod(&vec![f32::NAN; len]).expect("upload poison");
    let mut slash = stream.clone_htod(&vec![f32::NAN; len]).expect("upload poison");
    vertical_slash_scores_gpu(
        device,
        TensorRef::bshd(&q, [batch, seq, heads, head_dim]).expect("q view"),
        TensorRef::bshd(&k, [batch, seq, kv_heads, head_dim]).expect("k view"),
        workspace,
        &mut vertical,
        &mut slash,
    )
    .expect("launch");
    stream.synchronize().expect("kernels ran");
    let vertical = stream.clone_dtoh(&vertical).expect("download vertical");
    let slash = stream.clone_dtoh(&slash).expect("download slash");
    let shape = ReferenceShape { batch, seq, heads, kv_heads, head_dim };
    let mut worst: f64 = 0.0;
    for b in 0..batch {
        for h in 0..heads {
            let want = vertical_slash_scores(&q_f32, &k_f32, shape, b, h).expect("reference");
            let at = (b * heads + h) * seq;
            for (name, got, want) in
                [("vertical", &vertical[at..at + seq], &want.vertical), ("slash", &slash[at..at + seq], &want.slash)]
            {
                let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
                let error = relative_l2(&got, want);
                assert!(
                    error <= SCORES_TOLERANCE,
                    "{} d={head_dim} seq={seq} b={b} h={h}: {name} rel_l2 {error:.2e}",
                    T::DTYPE
                );
                worst = worst.max(error);
            }
        }
    }
    worst
}

fn matrix_for<T: AttentionElement>(device: &Device) {
    let seed = test_seed(&format!("vertical-slash scores {}", T::DTYPE.as_str()));
    let mut workspace = ScoresWorkspace::new();
    for head_dim in [64, 128] {
        for seq in [1, 63, 64, 65, 1000, 4097] {
            let error = check_case::<T>(device, &mut workspace, seq, head_dim, seed.wrapping_add(seq as u64));
            println!("ok   {} d={head_dim} seq={seq} heads 8/2 batch 2: worst rel_l2 {error:.2e}", T::DTYPE);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scores_bf16_match_reference() {
    matrix_for::<bf16>(&device());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scores_f16_match_reference() {
    matrix_for::<f16>(&device());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_shapes_are_rejected() {
    let device = device();
    let stream = device.stream();
    let q = stream.alloc_zeros::<bf16>(2 * 16 * 4 * 64).expect("q");
    let k = stream.alloc_zeros::<bf16>(2 * 16 * 3 * 64).expect("k");
    let mut vertical = stream.alloc_zeros::<f32>(2 * 4 * 16).expect("vertical");
    let mut slash = stream.alloc_zeros::<f32>(2 * 4 * 16).expect("slash");
    let mut workspace = ScoresWorkspace::new();
    let q_view = TensorRef::bshd(&q, [2, 16, 4, 64]).expect("q");
    let err = vertical_slash_scores_gpu(
        &device,
        q_view,
        TensorRef::bshd(&k, [2, 16, 3, 64]).expect("k"),
        &mut workspace,
        &mut vertical,
        &mut slash,
    )
    .expect_err("4 query heads over 3 kv heads");
    assert!(err.to_string().contains("not a multiple"), "{err}");
    let mut short = stream.alloc_zeros::<f32>(2 * 4 * 16 - 1).expect("short");
    let err = vertical_slash_scores_gpu(
        &device,
        q_view,
        TensorRef::bshd(&k, [2, 16, 2, 64]).expect("k"),
        &mut workspace,
        &mut vertical,
        &mut short,
    )
    .expect_err("a short output");
    assert!(err.to_string().contains("out_slash"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scores_at_128k_timing() {
    let device = device();
    let (seq, heads, kv_heads, head_dim) = (128 * 1024, 32, 8, 128);
    let stream = device.stream();
    // Timing does not depend on the values; zeros give uniform rows, whose total mass is checked.
    let q = stream.alloc_zeros::<bf16>(seq * heads * head_dim).expect("q");
    let k = stream.alloc_zeros::<bf16>(seq * kv_heads * head_dim).expect("k");
    let mut vertical = stream.alloc_zeros::<f32>(heads * seq).expect("vertical");
    let mut slash = stream.alloc_zeros::<f32>(heads * seq).expect("slash");
    let mut workspace = ScoresWorkspace::new();
    let q_view = TensorRef::bshd(&q, [1, seq, heads, head_dim]).expect("q");
    let k_view = TensorRef::bshd(&k, [1, seq, kv_heads, head_dim]).expect("k");
    let ms = median_ms(stream, 2, 10, || {
        vertical_slash_scores_gpu(&device, q_view, k_view, &mut workspace, &mut vertical, &mut slash)
    })
    .expect("timed runs");
    let flop = 2.0 * 2.0 * 64.0 * seq as f64 * heads as f64 * head_dim as f64;
    println!(
        "vs_scores {seq} tokens x {heads} heads (kv {kv_heads}), d={head_dim}, bf16 on {}: {ms:.3} ms \
         ({:.1} TFLOP/s counting both score passes), workspace {} bytes",
        device.name(),
        flop / ms / 1e9,
        workspace.device_bytes()
    );
    let vertical = stream.clone_dtoh(&vertical).expect("download vertical");
    for h in 0..heads {
        let total: f64 = vertical[h * seq..(h + 1) * seq].iter().map(|&x| x as f64).sum();
        assert!((total - 64.0).abs() < 1e-2, "head {h}: vertical mass {total}, want 64");
    }
}

// ---- The whole estimates: selections, converted index and block lists against the CPU ----

use minf::codegen::abi;
use minf::estimate::gpu::{
    estimate_block_sparse_gpu, estimate_vertical_slash_gpu, select_vertical_slash_gpu, EstimateWorkspace,
    VerticalSlashHead,
};
use minf::estimate::{clamp_sizes, FORCED_COLUMNS, FORCED_DIAGONALS};
use minf::vertical_slash::{IndexShape, VerticalSlashIndex};
use minf::BlockSparseIndex;
use minf_testkit::convert::convert_cpu;
use minf_testkit::estimate::{estimate_block_sparse, select_vertical_slash, VerticalSlashScores};
use minf_testkit::select::{block_score_tolerance, block_top_k, key_value};

/// Per-head sizes of a case: some heads unlisted, hostile sizes (0, past N) and MInference's.
fn head_list(heads: usize, seq: usize) -> Vec<VerticalSlashHead> {
    let sizes = [(1000, 6096), (0, 0), (31, 60), (seq + 5, seq + 7), (45, 120), (200, 50)];
    (0..heads)
        .filter(|h| h % 4 != 3) // every fourth head is not estimated
        .map(|h| {
            let (vertical, slash) = sizes[h % sizes.len()];
            VerticalSlashHead { head: h, vertical, slash }
        })
        .collect()
}

/// The top-`k` of `scores` as the CPU reference ranks them (`forced` first, ties to the smaller
/// index), applied to the GPU's own f32 scores: the GPU top-k must match it exactly.
fn select_from(scores: &[f32], slash: &[f32], v: usize, s: usize) -> (Vec<i32>, Vec<i32>) {
    let widen = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let pick = select_vertical_slash(&VerticalSlashScores { vertical: widen(scores), slash: widen(slash) }, v, s);
    (pick.vertical.iter().map(|&x| x as i32).collect(), pick.slash.iter().map(|&x| x as i32).collect())
}

/// Indices in `got` but not in `want` must be near-ties: CPU score within `tolerance` of the
/// CPU's k-th score. Returns how many swaps there were.
fn near_tie_swaps(got: &[i32], want: &[usize], scores: &[f64], forced: usize, what: &str) -> usize {
    let key = |i: usize| if i < forced { f64::INFINITY } else { scores[i] };
    let threshold = want.iter().map(|&i| key(i)).fold(f64::INFINITY, f64::min);
    let top = scores.iter().copied().fold(0.0f64, f64::max);
    let tolerance = 2e-3 * top + 1e-7;
    let mut swaps = 0;
    for &g in got {
        if !want.contains(&(g as usize)) {
            let gap = (key(g as usize) - threshold).abs();
            assert!(gap <= tolerance, "{what}: {g} selected with score {} vs threshold {threshold}", key(g as usize));
            swaps += 1;
        }
    }
    swaps
}

/// Each head's sizes in `list` clamped to `kv_len`, and a vertical-slash index for `batch` x
/// `heads` and `q_len` queries sized for them, every slot poisoned (the estimate must write each
/// count and each counted entry; the slots past the counts keep the poison).
fn poisoned_index(
    device: &Device,
    list: &[VerticalSlashHead],
    batch: usize,
    heads: usize,
    q_len: usize,
    kv_len: usize,
) -> (Vec<(usize, usize)>, VerticalSlashIndex) {
    let clamped: Vec<(usize, usize)> = list.iter().map(|e| clamp_sizes(kv_len, e.vertical, e.slash)).collect();
    let nnz_v = clamped.iter().map(|c| c.0).max().unwrap_or(1).max(1);
    let nnz_s = clamped.iter().map(|c| c.1).max().unwrap_or(1).max(1);
    let shape = IndexShape { batch, heads, rows: q_len.div_ceil(64), nnz_s, nnz_v };
    (clamped, super::convert::poisoned(device, VerticalSlashIndex::zeros(device, shape).expect("index")))
}

pub(super) fn vertical_slash_case<T: AttentionElement>(
    device: &Device,
    workspace: &mut EstimateWorkspace,
    (batch, seq, heads, kv_heads, head_dim): (usize, usize, usize, usize, usize),
    seed: u64,
) {
    let (q_host, k_host, q_f32, k_f32) = inputs::<T>(seq, heads, kv_heads, head_dim, seed);
    // `inputs` makes two sequences; keep the first `batch` of both the stored and the widened copy.
    let (q_len, k_len) = (batch * seq * heads * head_dim, batch * seq * kv_heads * head_dim);
    let (q_host, k_host) = (&q_host[..q_len], &k_host[..k_len]);
    let (q_f32, k_f32) = (&q_f32[..q_len], &k_f32[..k_len]);
    let stream = device.stream();
    let q = stream.clone_htod(q_host).expect("upload q");
    let k = stream.clone_htod(k_host).expect("upload k");
    let list = head_list(heads, seq);
    let (clamped, mut index) = poisoned_index(device, &list, batch, heads, seq, seq);
    let IndexShape { nnz_v, nnz_s, .. } = index.shape();
    estimate_vertical_slash_gpu(
        device,
        TensorRef::bshd(&q, [batch, seq, heads, head_dim]).expect("q view"),
        TensorRef::bshd(&k, [batch, seq, kv_heads, head_dim]).expect("k view"),
        &list,
        workspace,
        &mut index,
    )
    .expect("estimate");
    let got_index = index.to_host().expect("download index");
    let (vertical_scores, slash_scores) = workspace.scores_to_host(batch * heads * seq).expect("scores");
    let (raw_v, raw_s) = workspace.selections_to_host().expect("selections");
    let reference_shape = ReferenceShape { batch, seq, heads, kv_heads, head_dim };
    let (mut cpu_v, mut cpu_s) = (vec![-1i32; batch * heads * nnz_v], vec![-1i32; batch * heads * nnz_s]);
    let mut swaps = 0;
    for b in 0..batch {
        for h in 0..heads {
            let bh = b * heads + h;
            let (got_v, got_s) = (&raw_v[bh * nnz_v..(bh + 1) * nnz_v], &raw_s[bh * nnz_s..(bh + 1) * nnz_s]);
            let Some(pos) = list.iter().position(|e| e.head == h) else {
                assert!(got_v.iter().chain(got_s).all(|&x| x == -1), "unlisted head {h} has selections");
                continue;
            };
            let (v, s) = clamped[pos];
            let what = format!("{} d={head_dim} seq={seq} b={b} h={h} (v {v}, s {s})", T::DTYPE);
            assert!(got_v[v..].iter().chain(&got_s[s..]).all(|&x| x == -1), "{what}: padding");
            // Exact: the top-k of the GPU's own scores.
            let at = bh * seq;
            let (want_v, want_s) = select_from(
                &vertical_scores[at..at + seq],
                &slash_scores[at..at + seq],
                list[pos].vertical,
                list[pos].slash,
            );
            assert_eq!(&got_v[..v], &want_v[..], "{what}: columns vs the top-k of the GPU scores");
            assert_eq!(&got_s[..s], &want_s[..], "{what}: diagonals vs the top-k of the GPU scores");
            // Against the f64 reference: equal up to near-ties.
            let reference = vertical_slash_scores(q_f32, k_f32, reference_shape, b, h).expect("reference");
            let pick = select_vertical_slash(&reference, list[pos].vertical, list[pos].slash);
            swaps += near_tie_swaps(&got_v[..v], &pick.vertical, &reference.vertical, FORCED_COLUMNS, &what);
            swaps += near_tie_swaps(&got_s[..s], &pick.slash, &reference.slash, FORCED_DIAGONALS, &what);
            for (slot, &x) in cpu_v[bh * nnz_v..].iter_mut().zip(&pick.vertical) {
                *slot = x as i32;
            }
            for (slot, &x) in cpu_s[bh * nnz_s..].iter_mut().zip(&pick.slash) {
                *slot = x as i32;
            }
        }
    }
    let seqlens = vec![seq as i32; batch];
    let from_gpu_selection = convert_cpu(&seqlens, &raw_v, &raw_s, batch, heads, nnz_v, nnz_s, seq);
    assert!(from_gpu_selection == got_index, "{} seq={seq}: the converted index differs from convert_cpu", T::DTYPE);
    if swaps == 0 {
        let from_cpu_selection = convert_cpu(&seqlens, &cpu_v, &cpu_s, batch, heads, nnz_v, nnz_s, seq);
        assert!(from_cpu_selection == got_index, "{} seq={seq}: index differs from the CPU pipeline", T::DTYPE);
    }
    println!("ok   {} d={head_dim} seq={seq} heads {heads}/{kv_heads} batch {batch}: near-tie swaps {swaps}", T::DTYPE);
}

/// The top-k alone on planted scores: a few distinct values, so many keys tie at every threshold
/// and the forced columns and diagonals tie with each other, at lengths of one segment (4096
/// scores), several and a partial last one, up to 1M (256 segments per row): every listed head's
/// columns and diagonals equal the reference ranking (ties to the smaller index) exactly, the
/// rest of each row and every unlisted head's rows are -1.
#[test]
#[ignore = "needs a CUDA GPU"]
fn vertical_slash_top_k_breaks_ties_like_the_reference() {
    let device = device();
    let stream = device.stream();
    let mut rng = minf_testkit::TestRng::new(test_seed("vertical_slash_top_k_breaks_ties_like_the_reference"));
    let mut workspace = EstimateWorkspace::new();
    for (batch, heads, seq, distinct) in [
        (2, 8, 1, 3),
        (1, 4, 4095, 2),
        (2, 8, 4096, 5),
        (2, 8, 4097, 1),
        (1, 6, 3 * 4096 + 17, 7),
        (1, 4, 70_000, 1000),
        (1, 4, 1 << 20, 50),
    ] {
        let len = batch * heads * seq;
        let mut draw = |_| (rng.below(distinct) as f32 + 1.0) * 1e-4;
        let (vertical, slash): (Vec<f32>, Vec<f32>) =
            ((0..len).map(&mut draw).collect(), (0..len).map(&mut draw).collect());
        let list = head_list(heads, seq);
        select_vertical_slash_gpu(
            &device,
            &stream.clone_htod(&vertical).expect("upload vertical"),
            &stream.clone_htod(&slash).expect("upload slash"),
            [batch, heads, seq],
            &list,
            &mut workspace,
        )
        .expect("top-k");
        let (raw_v, raw_s) = workspace.selections_to_host().expect("selections");
        let clamped: Vec<(usize, usize)> = list.iter().map(|e| clamp_sizes(seq, e.vertical, e.slash)).collect();
        let nnz_v = clamped.iter().map(|c| c.0).max().unwrap_or(0).max(1);
        let nnz_s = clamped.iter().map(|c| c.1).max().unwrap_or(0).max(1);
        assert_eq!((raw_v.len(), raw_s.len()), (batch * heads * nnz_v, batch * heads * nnz_s), "capacities");
        for b in 0..batch {
            for h in 0..heads {
                let bh = b * heads + h;
                let (got_v, got_s) = (&raw_v[bh * nnz_v..(bh + 1) * nnz_v], &raw_s[bh * nnz_s..(bh + 1) * nnz_s]);
                let what = format!("seq {seq} distinct {distinct} b={b} h={h}");
                let Some(pos) = list.iter().position(|e| e.head == h) else {
                    assert!(got_v.iter().chain(got_s).all(|&x| x == -1), "{what}: unlisted head has selections");
                    continue;
                };
                let (v, s) = clamped[pos];
                let at = bh * seq;
                let (want_v, want_s) =
                    select_from(&vertical[at..at + seq], &slash[at..at + seq], list[pos].vertical, list[pos].slash);
                assert_eq!(&got_v[..v], &want_v[..], "{what}: columns");
                assert_eq!(&got_s[..s], &want_s[..], "{what}: diagonals");
                assert!(got_v[v..].iter().chain(&got_s[s..]).all(|&x| x == -1), "{what}: padding");
            }
        }
        println!("ok   top-k batch {batch} heads {heads} seq {seq}, {distinct} distinct scores");
    }
}

fn estimate_matrix_for<T: AttentionElement>(device: &Device) {
    let seed = test_seed(&format!("vertical-slash estimate {}", T::DTYPE.as_str()));
    let mut workspace = EstimateWorkspace::new();
    for (head_dim, seq) in
        [(128, 1), (128, 63), (64, 64), (128, 65), (96, 1000), (256, 1000), (128, 4097), (128, 32768)]
    {
        vertical_slash_case::<T>(device, &mut workspace, (2, seq, 8, 2, head_dim), seed.wrapping_add(seq as u64));
    }
    // MHA (one query head per KV head: half of each score block idles) and an odd group.
    vertical_slash_case::<T>(device, &mut workspace, (1, 3000, 4, 4, 128), seed + 7);
    vertical_slash_case::<T>(device, &mut workspace, (1, 3000, 6, 2, 128), seed + 8);
    println!("workspace {} bytes", workspace.device_bytes());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn vertical_slash_estimate_bf16_matches_reference() {
    estimate_matrix_for::<bf16>(&device());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn vertical_slash_estimate_f16_matches_reference() {
    estimate_matrix_for::<f16>(&device());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn vertical_slash_estimate_at_128k_matches_reference() {
    let mut workspace = EstimateWorkspace::new();
    vertical_slash_case::<bf16>(
        &device(),
        &mut workspace,
        (1, 131_072, 4, 2, 128),
        test_seed("vertical_slash_estimate_at_128k_matches_reference"),
    );
}

/// The block scores the GPU kept (the last group of pairs) lie within the score pass's tolerance
/// of the f64 dots of the GPU's own pooled blocks, and every such pair's lists equal, exactly, the
/// top-k of those stored scores (`minf_testkit::select::block_top_k`, ties to the smaller block):
/// the score tiles' arithmetic and causal layout, and the selection's rule.
fn block_lists_match_the_gpu_scores(
    workspace: &EstimateWorkspace,
    got: &minf::HostBlockSparseIndex,
    listed: &[usize],
    (batch, heads, kv_heads, head_dim): (usize, usize, usize, usize),
    (q_len, kv_len, top_k): (usize, usize, usize),
) {
    let kv_rows = kv_len.div_ceil(64);
    let group = heads / kv_heads;
    let mut kv_used: Vec<usize> = listed.iter().map(|h| h / group).collect();
    kv_used.sort_unstable();
    kv_used.dedup();
    let jobs = listed.len() + kv_used.len();
    let pooled = workspace.pooled_to_host(jobs * batch * kv_rows * head_dim).expect("pooled blocks");
    let row_of = |job: usize, b: usize, r: usize| &pooled[((job * batch + b) * kv_rows + r) * head_dim..][..head_dim];
    let (first_pair, slot_keys, stored) =
        workspace.block_scores_to_host().expect("block scores").expect("the estimate kept block scores");
    let tolerance = block_score_tolerance(head_dim);
    let mut worst = 0.0f64;
    for (slot, keys_of_pair) in stored.chunks(slot_keys).enumerate() {
        let pair = first_pair + slot;
        let (b, q_job) = (pair / listed.len(), pair % listed.len());
        let h = listed[q_job];
        let k_job = listed.len() + kv_used.partition_point(|&kv| kv < h / group);
        for r in 0..q_len.div_ceil(64) {
            let last = (kv_len - q_len + ((r + 1) * 64).min(q_len) - 1) / 64;
            let from = abi::block_score_offset(kv_len as u64, q_len as u64, r as u64) as usize;
            let keys = &keys_of_pair[from..from + last + 1];
            for (c, &key) in keys.iter().enumerate() {
                let (q, k) = (row_of(q_job, b, r), row_of(k_job, b, c));
                let exact: f64 = q.iter().zip(k).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                let magnitude: f64 = q.iter().zip(k).map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs()).sum();
                let error = (f64::from(key_value(key)) - exact).abs();
                assert!(
                    error <= tolerance * magnitude,
                    "q_len={q_len} kv_len={kv_len} b={b} h={h} r={r} c={c}: score {} against {exact} (sum |q k| {magnitude})",
                    key_value(key)
                );
                if magnitude > 0.0 {
                    worst = worst.max(error / magnitude);
                }
            }
            let want: Vec<i32> = block_top_k(keys, top_k).iter().map(|&c| c as i32).collect();
            assert_eq!(got.blocks(b, h, r), &want[..], "q_len={q_len} kv_len={kv_len} b={b} h={h} r={r}");
        }
    }
    println!(
        "ok   block scores of {} pairs within {worst:.2e} of sum |q k| (tolerance {tolerance:.2e}); lists exact",
        stored.len() / slot_keys
    );
}

pub(super) fn block_sparse_case<T: AttentionElement>(
    device: &Device,
    workspace: &mut EstimateWorkspace,
    (seq, heads, kv_heads, head_dim, top_k): (usize, usize, usize, usize, usize),
    seed: u64,
) -> minf::HostBlockSparseIndex {
    let batch = 2;
    let (q_host, k_host, q_f32, k_f32) = inputs::<T>(seq, heads, kv_heads, head_dim, seed);
    let stream = device.stream();
    let q = stream.clone_htod(&q_host).expect("upload q");
    let k = stream.clone_htod(&k_host).expect("upload k");
    let listed: Vec<usize> = (0..heads).filter(|h| h % 3 != 1).collect();
    let rows = seq.div_ceil(64);
    let capacity = top_k.min(rows).max(1);
    let mut index = BlockSparseIndex::zeros(device, batch, heads, rows, capacity).expect("index");
    estimate_block_sparse_gpu(
        device,
        TensorRef::bshd(&q, [batch, seq, heads, head_dim]).expect("q view"),
        TensorRef::bshd(&k, [batch, seq, kv_heads, head_dim]).expect("k view"),
        &listed,
        top_k,
        workspace,
        &mut index,
    )
    .expect("block-sparse estimate");
    let got = index.to_host().expect("download");
    if top_k > 0 {
        block_lists_match_the_gpu_scores(
            workspace,
            &got,
            &listed,
            (batch, heads, kv_heads, head_dim),
            (seq, seq, top_k),
        );
    }
    let want = estimate_block_sparse(&q_f32, &k_f32, ReferenceShape { batch, seq, heads, kv_heads, head_dim }, top_k)
        .expect("reference");
    let mut mismatched_rows = 0;
    for b in 0..batch {
        for h in 0..heads {
            for r in 0..rows {
                let blocks = got.blocks(b, h, r);
                if !listed.contains(&h) {
                    assert!(blocks.is_empty(), "unlisted head {h} has blocks");
                    continue;
                }
                let expected = want.blocks(b, h, r);
                assert_eq!(blocks.len(), expected.len(), "b={b} h={h} r={r}: count");
                assert!(blocks.windows(2).all(|w| w[0] < w[1]), "b={b} h={h} r={r}: ascending {blocks:?}");
                if blocks != expected {
                    mismatched_rows += 1;
                }
            }
        }
    }
    // f32 pooling on the GPU against f64 on the CPU: a rare near-tie may swap one block.
    let listed_rows = batch * listed.len() * rows;
    assert!(
        mismatched_rows * 200 <= listed_rows,
        "{} seq={seq} top_k={top_k}: {mismatched_rows} of {listed_rows} block lists differ",
        T::DTYPE
    );
    println!("ok   {} block-sparse seq={seq} top_k={top_k}: {mismatched_rows}/{listed_rows} lists differ", T::DTYPE);
    got
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn block_sparse_estimate_matches_reference() {
    let device = device();
    let seed = test_seed("block_sparse_estimate_matches_reference");
    let mut workspace = EstimateWorkspace::new();
    for (seq, top_k) in [(1, 100), (65, 100), (1000, 3), (4097, 100), (32768, 100), (5000, 0), (5000, 1000)] {
        block_sparse_case::<bf16>(&device, &mut workspace, (seq, 6, 2, 128, top_k), seed + seq as u64);
    }
    block_sparse_case::<f16>(&device, &mut workspace, (4097, 4, 4, 64, 100), seed + 1);
    // Score tiles of every head_dim step count, several query tiles (128 query blocks each) and
    // partial last blocks and tiles.
    block_sparse_case::<bf16>(&device, &mut workspace, (9000, 6, 3, 96, 100), seed + 2);
    block_sparse_case::<bf16>(&device, &mut workspace, (16_447, 4, 1, 256, 100), seed + 3);
    // k up to SELECT_STREAM_BUFFER - SELECT_STREAM_CHUNK takes the streaming selection (every
    // case above), also on rows of more than SELECT_SHORT_ROWS key blocks; a larger k the short
    // selection up to SELECT_SHORT_ROWS and the block-wide one above.
    block_sparse_case::<bf16>(&device, &mut workspace, (140_000, 2, 1, 64, 100), seed + 4);
    block_sparse_case::<bf16>(&device, &mut workspace, (30_000, 2, 1, 64, 300), seed + 6);
    block_sparse_case::<bf16>(&device, &mut workspace, (140_000, 2, 1, 64, 300), seed + 5);
}

/// Equal scores everywhere (every key row the same vector, prompts of whole 64-token blocks): every
/// candidate of a query block ties, so it keeps its first `min(top_k, candidates)` key blocks. With
/// top-100 every selection is the streaming one, whose compactions then keep the smallest blocks of
/// equal keys; with top-300 prompts below and above SELECT_SHORT_ROWS key blocks run the short
/// selection and the block-wide one, whose survivors are then the whole row.
#[test]
#[ignore = "needs a CUDA GPU"]
fn block_sparse_estimate_of_equal_scores_keeps_the_first_blocks() {
    let device = device();
    let seed = test_seed("block_sparse_estimate_of_equal_scores_keeps_the_first_blocks");
    let mut workspace = EstimateWorkspace::new();
    let (heads, kv_heads, head_dim) = (2, 1, 64);
    for (seq, top_k) in [(16_384usize, 100usize), (140_032, 100), (16_384, 300), (140_032, 300)] {
        let (q_host, _, _, _) = inputs::<bf16>(seq, heads, kv_heads, head_dim, seed + seq as u64);
        let q_host = &q_host[..seq * heads * head_dim];
        let key: Vec<bf16> = (0..head_dim).map(|e| bf16::from_f32(0.25 + e as f32 / 64.0)).collect();
        let k_host: Vec<bf16> = key.iter().copied().cycle().take(seq * kv_heads * head_dim).collect();
        let stream = device.stream();
        let q = stream.clone_htod(q_host).expect("upload q");
        let k = stream.clone_htod(&k_host).expect("upload k");
        let rows = seq.div_ceil(64);
        let capacity = top_k.min(rows);
        let mut index = BlockSparseIndex::zeros(&device, 1, heads, rows, capacity).expect("index");
        let listed: Vec<usize> = (0..heads).collect();
        estimate_block_sparse_gpu(
            &device,
            TensorRef::bshd(&q, [1, seq, heads, head_dim]).expect("q view"),
            TensorRef::bshd(&k, [1, seq, kv_heads, head_dim]).expect("k view"),
            &listed,
            top_k,
            &mut workspace,
            &mut index,
        )
        .expect("block-sparse estimate");
        let got = index.to_host().expect("download");
        for h in 0..heads {
            for r in 0..rows {
                let want: Vec<i32> = (0..top_k.min(r + 1) as i32).collect();
                assert_eq!(got.blocks(0, h, r), &want[..], "seq={seq} top_k={top_k} h={h} r={r}");
            }
        }
        println!("ok   block-sparse equal scores seq={seq} top_k={top_k}: {rows} rows x {heads} heads keep their first blocks");
    }
}

/// The score matrices computed and selected a few (batch, head) pairs at a time (a small
/// [`EstimateWorkspace::limit_block_scores`]) give exactly the lists of one pass, whose stored
/// scores are all checked: whole prompts and chunks whose prefixes reach past several key tiles.
#[test]
#[ignore = "needs a CUDA GPU"]
fn block_sparse_estimate_in_groups_of_heads_matches() {
    let device = device();
    let seed = test_seed("block_sparse_estimate_in_groups_of_heads_matches");
    // One pair per group, then three (the last group partial: 2 batches x 4 listed heads).
    for (i, limit) in [1usize, 3 * 4 * 200 * 201 / 2].into_iter().enumerate() {
        let mut grouped = EstimateWorkspace::new();
        grouped.limit_block_scores(limit);
        let mut one_pass = EstimateWorkspace::new();
        let (case, case_seed) = ((12_800, 6, 2, 128, 100), seed + i as u64);
        let got = block_sparse_case::<bf16>(&device, &mut grouped, case, case_seed);
        let want = block_sparse_case::<bf16>(&device, &mut one_pass, case, case_seed);
        assert_eq!(got, want, "limit {limit}: the lists computed in groups differ from one pass's");
        let (chunk, chunk_seed) = ((3000, 20_037, 6, 2, 128, 100), seed + 10 + i as u64);
        let got = block_sparse_chunk_case::<bf16>(&device, &mut grouped, chunk, chunk_seed);
        let want = block_sparse_chunk_case::<bf16>(&device, &mut one_pass, chunk, chunk_seed);
        assert_eq!(got, want, "limit {limit}: the chunk's lists computed in groups differ from one pass's");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn estimate_arguments_are_checked() {
    let device = device();
    let stream = device.stream();
    let (seq, heads) = (100, 4);
    let q = stream.alloc_zeros::<bf16>(seq * heads * 64).expect("q");
    let k = stream.alloc_zeros::<bf16>(seq * 2 * 64).expect("k");
    let q_view = TensorRef::bshd(&q, [1, seq, heads, 64]).expect("q");
    let k_view = TensorRef::bshd(&k, [1, seq, 2, 64]).expect("k");
    let mut workspace = EstimateWorkspace::new();
    let shape = IndexShape { batch: 1, heads, rows: 2, nnz_s: 50, nnz_v: 30 };
    let mut index = VerticalSlashIndex::zeros(&device, shape).expect("index");
    let head = |head, vertical, slash| VerticalSlashHead { head, vertical, slash };
    let mut estimate = |list: &[VerticalSlashHead], index: &mut VerticalSlashIndex| {
        estimate_vertical_slash_gpu(&device, q_view, k_view, list, &mut workspace, index).map(|_| ())
    };
    let err = estimate(&[head(4, 30, 50)], &mut index).expect_err("head past the count");
    assert!(err.to_string().contains("head 4"), "{err}");
    let err = estimate(&[head(1, 30, 50), head(1, 30, 50)], &mut index).expect_err("twice");
    assert!(err.to_string().contains("twice"), "{err}");
    let err = estimate(&[head(0, 31, 50)], &mut index).expect_err("over capacity");
    assert!(err.to_string().contains("at most 30 columns"), "{err}");
    let mut wrong = VerticalSlashIndex::zeros(&device, IndexShape { rows: 3, ..shape }).expect("index");
    let err = estimate(&[head(0, 30, 50)], &mut wrong).expect_err("rows");
    assert!(err.to_string().contains("rows"), "{err}");
    estimate(&[head(0, 0, 0), head(3, 1, 1)], &mut index).expect("sizes clamp up to 30 / 50");
    let mut blocks = BlockSparseIndex::zeros(&device, 1, heads, 2, 1).expect("index");
    let err = estimate_block_sparse_gpu(&device, q_view, k_view, &[0], 2, &mut workspace, &mut blocks)
        .expect_err("capacity 1 for top_k 2");
    assert!(err.to_string().contains("holds 1 per list"), "{err}");
    assert!(BlockSparseIndex::zeros(&device, 1, heads, 2, 0).is_err(), "capacity 0");
}

// ---- Estimation of a chunk: q_len queries after a prefix, against the CPU chunk rules ----

use minf_testkit::convert::convert_chunk_cpu;
use minf_testkit::estimate::{chunk_vertical_slash_scores, estimate_block_sparse_chunk, ChunkShape};

/// The last `q_len` of every sequence's `kv_len` rows of `[batch, kv_len, heads, head_dim]`.
fn chunk_rows<X: Copy>(x: &[X], batch: usize, kv_len: usize, q_len: usize, row: usize) -> Vec<X> {
    (0..batch).flat_map(|b| x[(b * kv_len + kv_len - q_len) * row..(b + 1) * kv_len * row].iter().copied()).collect()
}

/// The vertical-slash estimate of a chunk of `q_len` queries after `prefix` tokens: the GPU scores
/// against the f64 chunk scores, the selections exact against the top-k of the GPU scores and equal
/// to the f64 chunk rule's up to near-ties, the index equal to the chunk converter's CPU model.
pub(super) fn vertical_slash_chunk_case<T: AttentionElement>(
    device: &Device,
    workspace: &mut EstimateWorkspace,
    (q_len, prefix, heads, kv_heads, head_dim): (usize, usize, usize, usize, usize),
    seed: u64,
) {
    let (batch, kv_len) = (2, prefix + q_len);
    let (q_all, k_host, q_all_f32, k_f32) = inputs::<T>(kv_len, heads, kv_heads, head_dim, seed);
    let q_host = chunk_rows(&q_all, batch, kv_len, q_len, heads * head_dim);
    let q_f32 = chunk_rows(&q_all_f32, batch, kv_len, q_len, heads * head_dim);
    let stream = device.stream();
    let q = stream.clone_htod(&q_host).expect("upload q");
    let k = stream.clone_htod(&k_host).expect("upload k");
    let list = head_list(heads, kv_len);
    let (clamped, mut index) = poisoned_index(device, &list, batch, heads, q_len, kv_len);
    let IndexShape { nnz_v, nnz_s, .. } = index.shape();
    estimate_vertical_slash_gpu(
        device,
        TensorRef::bshd(&q, [batch, q_len, heads, head_dim]).expect("q view"),
        TensorRef::bshd(&k, [batch, kv_len, kv_heads, head_dim]).expect("k view"),
        &list,
        workspace,
        &mut index,
    )
    .expect("chunk estimate");
    let got_index = index.to_host().expect("download index");
    let (vertical_scores, slash_scores) = workspace.scores_to_host(batch * heads * kv_len).expect("scores");
    let (raw_v, raw_s) = workspace.selections_to_host().expect("selections");
    let chunk = ChunkShape { batch, q_len, kv_len, heads, kv_heads, head_dim };
    let what = |b: usize, h: usize| format!("{} d={head_dim} q_len={q_len} prefix={prefix} b={b} h={h}", T::DTYPE);
    let mut swaps = 0;
    for b in 0..batch {
        for h in 0..heads {
            let bh = b * heads + h;
            let at = bh * kv_len;
            let reference = chunk_vertical_slash_scores(&q_f32, &k_f32, chunk, b, h).expect("reference");
            // Every head's scores are computed only when it is listed; compare the listed ones.
            let Some(pos) = list.iter().position(|e| e.head == h) else { continue };
            for (name, got, want) in [
                ("vertical", &vertical_scores[at..at + kv_len], &reference.vertical),
                ("slash", &slash_scores[at..at + kv_len], &reference.slash),
            ] {
                let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
                let error = relative_l2(&got, want);
                assert!(error <= SCORES_TOLERANCE, "{}: {name} scores rel_l2 {error:.2e}", what(b, h));
            }
            let (v, s) = clamped[pos];
            let (got_v, got_s) = (&raw_v[bh * nnz_v..][..v], &raw_s[bh * nnz_s..][..s]);
            let (want_v, want_s) = select_from(
                &vertical_scores[at..at + kv_len],
                &slash_scores[at..at + kv_len],
                list[pos].vertical,
                list[pos].slash,
            );
            assert_eq!(got_v, &want_v[..], "{}: columns vs the top-k of the GPU scores", what(b, h));
            assert_eq!(got_s, &want_s[..], "{}: diagonals vs the top-k of the GPU scores", what(b, h));
            let pick = select_vertical_slash(&reference, list[pos].vertical, list[pos].slash);
            swaps += near_tie_swaps(got_v, &pick.vertical, &reference.vertical, FORCED_COLUMNS, &what(b, h));
            swaps += near_tie_swaps(got_s, &pick.slash, &reference.slash, FORCED_DIAGONALS, &what(b, h));
        }
    }
    let (q_lens, kv_lens) = (vec![q_len as i32; batch], vec![kv_len as i32; batch]);
    let want_index = convert_chunk_cpu(&q_lens, &kv_lens, &raw_v, &raw_s, (batch, heads, nnz_v, nnz_s), q_len, kv_len);
    assert!(want_index == got_index, "{}: the chunk's index differs from convert_chunk_cpu", what(0, 0));
    println!(
        "ok   {} d={head_dim} chunk q_len={q_len} after {prefix} tokens, heads {heads}/{kv_heads}: near-tie swaps \
         {swaps}",
        T::DTYPE
    );
}

/// The block-sparse estimate of a chunk against the f64 chunk rule (counts exact, lists up to rare
/// near-ties of f32 pooling).
pub(super) fn block_sparse_chunk_case<T: AttentionElement>(
    device: &Device,
    workspace: &mut EstimateWorkspace,
    (q_len, prefix, heads, kv_heads, head_dim, top_k): (usize, usize, usize, usize, usize, usize),
    seed: u64,
) -> minf::HostBlockSparseIndex {
    let (batch, kv_len) = (2, prefix + q_len);
    let (q_all, k_host, q_all_f32, k_f32) = inputs::<T>(kv_len, heads, kv_heads, head_dim, seed);
    let q_host = chunk_rows(&q_all, batch, kv_len, q_len, heads * head_dim);
    let q_f32 = chunk_rows(&q_all_f32, batch, kv_len, q_len, heads * head_dim);
    let stream = device.stream();
    let q = stream.clone_htod(&q_host).expect("upload q");
    let k = stream.clone_htod(&k_host).expect("upload k");
    let listed: Vec<usize> = (0..heads).filter(|h| h % 3 != 1).collect();
    let rows = q_len.div_ceil(64);
    let capacity = top_k.min(kv_len.div_ceil(64)).max(1);
    let mut index = BlockSparseIndex::zeros(device, batch, heads, rows, capacity).expect("index");
    estimate_block_sparse_gpu(
        device,
        TensorRef::bshd(&q, [batch, q_len, heads, head_dim]).expect("q view"),
        TensorRef::bshd(&k, [batch, kv_len, kv_heads, head_dim]).expect("k view"),
        &listed,
        top_k,
        workspace,
        &mut index,
    )
    .expect("block-sparse chunk estimate");
    let got = index.to_host().expect("download");
    if top_k > 0 {
        let shape = (batch, heads, kv_heads, head_dim);
        block_lists_match_the_gpu_scores(workspace, &got, &listed, shape, (q_len, kv_len, top_k));
    }
    let chunk = ChunkShape { batch, q_len, kv_len, heads, kv_heads, head_dim };
    let want = estimate_block_sparse_chunk(&q_f32, &k_f32, chunk, top_k).expect("reference");
    let mut mismatched_rows = 0;
    for b in 0..batch {
        for h in 0..heads {
            for r in 0..rows {
                let blocks = got.blocks(b, h, r);
                if !listed.contains(&h) {
                    assert!(blocks.is_empty(), "unlisted head {h} has blocks");
                    continue;
                }
                let expected = want.blocks(b, h, r);
                let what = format!("q_len={q_len} prefix={prefix} b={b} h={h} r={r}");
                assert_eq!(blocks.len(), expected.len(), "{what}: count");
                assert!(blocks.windows(2).all(|w| w[0] < w[1]), "{what}: ascending {blocks:?}");
                let last = (prefix + ((r + 1) * 64).min(q_len) - 1) / 64;
                assert!(blocks.iter().all(|&c| c as usize <= last), "{what}: a block past the causal edge");
                if blocks != expected {
                    mismatched_rows += 1;
                }
            }
        }
    }
    let listed_rows = batch * listed.len() * rows;
    assert!(
        mismatched_rows * 200 <= listed_rows.max(200),
        "{} q_len={q_len} prefix={prefix} top_k={top_k}: {mismatched_rows} of {listed_rows} block lists differ",
        T::DTYPE
    );
    println!(
        "ok   {} block-sparse chunk q_len={q_len} after {prefix}: {mismatched_rows}/{listed_rows} differ",
        T::DTYPE
    );
    got
}

/// q_len of the matrix, each after prefixes that are not multiples of 64 (and one that is).
/// The last case's 21000 keys make six 4096-score segments per top-k row.
const CHUNK_CASES: [(usize, usize); 9] =
    [(1, 1000), (63, 37), (64, 4133), (65, 100), (1000, 1), (1000, 3037), (1000, 2048), (4097, 701), (1000, 20_000)];

#[test]
#[ignore = "needs a CUDA GPU"]
fn vertical_slash_estimate_of_a_chunk_matches_the_chunk_rule() {
    let device = device();
    let seed = test_seed("vertical_slash_estimate_of_a_chunk_matches_the_chunk_rule");
    let mut workspace = EstimateWorkspace::new();
    for (i, &(q_len, prefix)) in CHUNK_CASES.iter().enumerate() {
        let head_dim = [128, 64, 96, 256][i % 4];
        vertical_slash_chunk_case::<bf16>(&device, &mut workspace, (q_len, prefix, 8, 2, head_dim), seed + i as u64);
    }
    vertical_slash_chunk_case::<f16>(&device, &mut workspace, (65, 1000, 6, 2, 128), seed + 100);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn block_sparse_estimate_of_a_chunk_matches_the_chunk_rule() {
    let device = device();
    let seed = test_seed("block_sparse_estimate_of_a_chunk_matches_the_chunk_rule");
    let mut workspace = EstimateWorkspace::new();
    for (i, &(q_len, prefix)) in CHUNK_CASES.iter().enumerate() {
        for top_k in [3, 100] {
            let case = (q_len, prefix, 6, 2, 128, top_k);
            block_sparse_chunk_case::<bf16>(&device, &mut workspace, case, seed + i as u64);
        }
    }
    block_sparse_chunk_case::<f16>(&device, &mut workspace, (1000, 3037, 4, 4, 64, 100), seed + 100);
    // A chunk over more key blocks than the short selection takes.
    block_sparse_chunk_case::<bf16>(&device, &mut workspace, (1000, 139_037, 2, 1, 64, 100), seed + 101);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn chunk_estimates_refuse_more_queries_than_keys() {
    let device = device();
    let stream = device.stream();
    let q = stream.alloc_zeros::<bf16>(100 * 4 * 64).expect("q");
    let k = stream.alloc_zeros::<bf16>(99 * 2 * 64).expect("k");
    let (q_view, k_view) =
        (TensorRef::bshd(&q, [1, 100, 4, 64]).expect("q"), TensorRef::bshd(&k, [1, 99, 2, 64]).expect("k"));
    let mut workspace = EstimateWorkspace::new();
    let mut index =
        VerticalSlashIndex::zeros(&device, IndexShape { batch: 1, heads: 4, rows: 2, nnz_s: 50, nnz_v: 30 })
            .expect("index");
    let head = [VerticalSlashHead { head: 0, vertical: 30, slash: 50 }];
    let err = estimate_vertical_slash_gpu(&device, q_view, k_view, &head, &mut workspace, &mut index)
        .expect_err("q_len > kv_len");
    assert!(err.to_string().contains("q_len <= kv_len"), "{err}");
    let mut blocks = BlockSparseIndex::zeros(&device, 1, 4, 2, 2).expect("index");
    let err = estimate_block_sparse_gpu(&device, q_view, k_view, &[0], 2, &mut workspace, &mut blocks)
        .expect_err("q_len > kv_len");
    assert!(err.to_string().contains("q_len <= kv_len"), "{err}");
}
