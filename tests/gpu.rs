//! GPU tests: every kernel against the CPU float64 reference. They need a CUDA GPU, so they are
//! ignored by default; on a GPU machine run them with
//! `cargo test --release --test gpu -- --include-ignored` (or the bundle from
//! `scripts/gpu-bundle.sh`). Without a GPU they fail with the reason rather than pass.
//!
//! Inputs are fresh random normals on every run (the seed is printed; `MINF_TEST_SEED=N` replays
//! it, see `tests/common/seed.rs`), outputs are poisoned with NaN bit patterns before each launch,
//! and every output element must be written and finite.

use half::{bf16, f16};
use minf::codegen::{Arch, DType, KernelSpec, Mainloop, Pattern};
use minf::tensor::Layout;
use minf::{
    attention, dense_attention, AttentionElement, AttentionOptions, Device, PatternArgs, TensorMut, TensorRef,
    TileChoice, Varlen,
};
use minf_testkit::reference::{masked_attention_rows, random_normal, relative_l2, ReferenceShape};

#[path = "common/seed.rs"]
mod seed;

use seed::test_seed;

#[path = "gpu/chunked.rs"]
mod chunked;
#[path = "gpu/convert.rs"]
mod convert;
#[path = "gpu/estimate.rs"]
mod estimate;
#[path = "gpu/foreign.rs"]
mod foreign;
#[path = "gpu/patterns.rs"]
mod patterns;
#[path = "gpu/prefill.rs"]
mod prefill;
#[path = "gpu/sanitize.rs"]
mod sanitize;
#[path = "gpu/search.rs"]
mod search;
#[path = "gpu/tma.rs"]
mod tma;

/// bf16/f16 operands land near 3e-3 relative L2; this is the acceptance bound.
const TOLERANCE: f64 = 1e-2;

fn device() -> Device {
    Device::new(0).unwrap_or_else(|e| panic!("GPU test needs a CUDA GPU, and none is usable: {e}"))
}

/// `host` rounded to `T` on the device.
fn upload<T: AttentionElement>(device: &Device, host: &[f32]) -> cudarc::driver::CudaSlice<T> {
    let rounded: Vec<T> = host.iter().map(|&x| T::from_f32(x)).collect();
    device.stream().clone_htod(&rounded).expect("upload")
}

/// One launch of `attention` on device `q`/`k`/`v` rows (batch 1, BSHD: `[rows, heads | kv_heads,
/// d]`), its output and LSE poisoned with NaN before it and downloaded after.
fn launch_bshd<T: AttentionElement>(
    device: &Device,
    tensors: (&cudarc::driver::CudaSlice<T>, &cudarc::driver::CudaSlice<T>, &cudarc::driver::CudaSlice<T>),
    dims: (usize, usize, usize),
    args: PatternArgs<'_>,
    spec: Option<KernelSpec>,
    causal: bool,
) -> (Vec<T>, Vec<f32>) {
    launch_bshd_on(device, tensors, dims, args, spec, causal, None)
}

/// `launch_bshd` with a persistent kernel's grid capped at `persistent_blocks` blocks.
fn launch_bshd_on<T: AttentionElement>(
    device: &Device,
    (q, k, v): (&cudarc::driver::CudaSlice<T>, &cudarc::driver::CudaSlice<T>, &cudarc::driver::CudaSlice<T>),
    (heads, kv_heads, d): (usize, usize, usize),
    args: PatternArgs<'_>,
    spec: Option<KernelSpec>,
    causal: bool,
    persistent_blocks: Option<u32>,
) -> (Vec<T>, Vec<f32>) {
    let stream = device.stream();
    let (q_len, kv_len) = (q.len() / (heads * d), k.len() / (kv_heads * d));
    let mut out = stream.clone_htod(&vec![T::from_f32(f32::NAN); q.len()]).expect("out");
    let mut lse = stream.clone_htod(&vec![f32::NAN; heads * q_len]).expect("lse");
    attention(
        device,
        TensorRef::bshd(q, [1, q_len, heads, d]).expect("q view"),
        TensorRef::bshd(k, [1, kv_len, kv_heads, d]).expect("k view"),
        TensorRef::bshd(v, [1, kv_len, kv_heads, d]).expect("v view"),
        TensorMut::bshd(&mut out, [1, q_len, heads, d]).expect("out view"),
        args,
        AttentionOptions { lse: Some(&mut lse), spec, causal, persistent_blocks, ..Default::default() },
    )
    .expect("launch");
    (stream.clone_dtoh(&out).expect("out"), stream.clone_dtoh(&lse).expect("lse"))
}

/// Query rows the CPU reference computes: all of them for short sequences, a spread (including
/// the first and last rows and tile edges) for long ones.
fn reference_rows(seq: usize) -> Vec<usize> {
    if seq <= 1100 {
        return (0..seq).collect();
    }
    let mut rows: Vec<usize> = (0..seq).step_by(37).collect();
    rows.extend([63, 64, 127, 128, seq - 2, seq - 1]);
    rows.sort_unstable();
    rows.dedup();
    rows
}

struct Case {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Store tensors as `[batch, heads, seq, head_dim]` instead of `[batch, seq, heads, head_dim]`.
    bhsd: bool,
}

struct Outcome {
    out_error: f64,
    lse_error: f64,
}

/// A packed batch: host offsets of each sequence in the `[1, total, heads, dim]` tensors.
struct Packed<'a> {
    varlen: &'a Varlen,
    offsets: Vec<usize>,
}

fn to_logical_order(layout: &Layout, data: &[f32]) -> Vec<f32> {
    let [b, s, h, d] = layout.shape;
    let mut out = Vec::with_capacity(b * s * h * d);
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let base = bi * layout.strides[0] + si * layout.strides[1] + hi * layout.strides[2];
                out.extend_from_slice(&data[base..base + d]);
            }
        }
    }
    out
}

/// Runs `args` on fresh random inputs and compares with the float64 reference under `visible`
/// (batch, head, row, key; rows and keys relative to their sequence). With `packed`, `case.batch`
/// must be 1 and `case.seq` the total rows; sequences are checked one by one.
fn check_attention<T: AttentionElement>(
    device: &Device,
    case: &Case,
    seed: u64,
    spec: Option<KernelSpec>,
    args: PatternArgs<'_>,
    packed: Option<&Packed<'_>>,
    visible: &(dyn Fn(usize, usize, usize, usize) -> bool + Sync),
) -> Outcome {
    check_attention_with::<T>(device, case, seed, spec, args, packed, visible, None)
}

/// [`check_attention`], launched through `choice` (a per-head tile choice over every head) if given.
#[allow(clippy::too_many_arguments)]
fn check_attention_with<T: AttentionElement>(
    device: &Device,
    case: &Case,
    seed: u64,
    spec: Option<KernelSpec>,
    args: PatternArgs<'_>,
    packed: Option<&Packed<'_>>,
    visible: &(dyn Fn(usize, usize, usize, usize) -> bool + Sync),
    choice: Option<&mut TileChoice>,
) -> Outcome {
    let Case { batch, seq, heads, kv_heads, head_dim, bhsd } = *case;
    let layout = |h: usize| {
        if bhsd {
            Layout::bhsd([batch, seq, h, head_dim])
        } else {
            Layout::bshd([batch, seq, h, head_dim])
        }
    };
    let (q_layout, kv_layout) = (layout(heads), layout(kv_heads));
    // Round the random inputs to T so the reference sees exactly what the kernel sees.
    let round = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let q_host = round(random_normal(q_layout.span(), seed));
    let k_host = round(random_normal(kv_layout.span(), seed ^ 0x5555));
    let v_host = round(random_normal(kv_layout.span(), seed ^ 0xAAAA));

    let stream = device.stream();
    let q = stream.clone_htod(&q_host).expect("upload q");
    let k = stream.clone_htod(&k_host).expect("upload k");
    let v = stream.clone_htod(&v_host).expect("upload v");
    // Poison the outputs with NaN so an unwritten element cannot pass.
    let mut out = stream.clone_htod(&vec![T::from_f32(f32::NAN); q_layout.span()]).expect("upload poison");
    let mut lse = stream.clone_htod(&vec![f32::NAN; batch * heads * seq]).expect("upload lse poison");
    let scale = 1.0 / (head_dim as f64).sqrt();
    let sequences: Vec<(usize, usize)> = match packed {
        Some(p) => p.offsets.windows(2).map(|w| (w[0], w[1] - w[0])).collect(),
        None => vec![(0, seq); batch],
    };
    let varlen = packed.map(|p| p.varlen);
    let (q_ref, k_ref, v_ref) = (
        TensorRef::new(&q, q_layout).expect("q view"),
        TensorRef::new(&k, kv_layout).expect("k view"),
        TensorRef::new(&v, kv_layout).expect("v view"),
    );
    let out_ref = TensorMut::new(&mut out, q_layout).expect("out view");
    let options = AttentionOptions { lse: Some(&mut lse), varlen, spec, ..Default::default() };
    match choice {
        Some(choice) => choice.attention(device, q_ref, k_ref, v_ref, out_ref, args, options),
        None => attention(device, q_ref, k_ref, v_ref, out_ref, args, options),
    }
    .expect("launch");
    stream.synchronize().expect("kernel ran");
    let out_host: Vec<f32> = stream.clone_dtoh(&out).expect("download out").into_iter().map(T::to_f32).collect();
    let lse_host: Vec<f32> = stream.clone_dtoh(&lse).expect("download lse");

    let widen = |data: &[T], l: &Layout| to_logical_order(l, &data.iter().map(|x| x.to_f32()).collect::<Vec<_>>());
    let (q_all, k_all, v_all) = (widen(&q_host, &q_layout), widen(&k_host, &kv_layout), widen(&v_host, &kv_layout));
    let out_logical = to_logical_order(&q_layout, &out_host);
    let covered: usize = sequences.iter().map(|s| s.1).sum::<usize>() * heads * head_dim;
    let written = if packed.is_some() { &out_logical[..covered] } else { &out_logical[..] };
    assert!(
        written.iter().all(|x| !x.is_nan()),
        "unwritten or NaN output (poison survived) for {}",
        describe::<T>(case)
    );

    let mut got = Vec::new();
    let mut want = Vec::new();
    let mut lse_error: f64 = 0.0;
    for (b, &(start, len)) in sequences.iter().enumerate() {
        if len == 0 {
            continue;
        }
        // One sequence at a time: its rows of batch slot `b` (or of the packed tensors).
        let slot = if packed.is_some() { 0 } else { b };
        let slice = |all: &[f32], h: usize| -> Vec<f32> {
            let row = h * head_dim;
            all[(slot * seq + start) * row..(slot * seq + start + len) * row].to_vec()
        };
        let shape = ReferenceShape { batch: 1, seq: len, heads, kv_heads, head_dim };
        let rows = reference_rows(len);
        let reference = masked_attention_rows(
            shape,
            &slice(&q_all, heads),
            &slice(&k_all, kv_heads),
            &slice(&v_all, kv_heads),
            scale,
            &rows,
            |_, h, i, j| visible(b, h, i, j),
        );
        for (t, &(_, i, h)) in reference.rows.iter().enumerate() {
            let base = ((slot * seq + start + i) * heads + h) * head_dim;
            got.extend(out_logical[base..base + head_dim].iter().map(|x| *x as f64));
            let lse_at = if packed.is_some() { h * seq + start + i } else { (b * heads + h) * seq + i };
            let (g, w) = (lse_host[lse_at] as f64, reference.lse[t]);
            let diff = if g == w { 0.0 } else { (g - w).abs() };
            lse_error = lse_error.max(if diff.is_nan() { f64::INFINITY } else { diff });
        }
        want.extend(reference.out);
    }
    Outcome { out_error: relative_l2(&got, &want), lse_error }
}

fn run_case<T: AttentionElement>(device: &Device, case: &Case, seed: u64) -> Outcome {
    check_attention::<T>(device, case, seed, None, PatternArgs::Dense, None, &|_, _, i, j| j <= i)
}

fn describe<T: AttentionElement>(case: &Case) -> String {
    format!(
        "{} d={} seq={} heads={}/{} batch={}{}",
        T::DTYPE,
        case.head_dim,
        case.seq,
        case.heads,
        case.kv_heads,
        case.batch,
        if case.bhsd { " bhsd" } else { "" }
    )
}

fn matrix_for<T: AttentionElement>(device: &Device) {
    let seed = test_seed(&format!("dense matrix {}", T::DTYPE.as_str()));
    let mut worst: f64 = 0.0;
    let mut failures = Vec::new();
    for head_dim in [64, 96, 128, 256] {
        for seq in [1, 63, 64, 65, 1000, 4097] {
            for (heads, kv_heads, batch, bhsd) in [(32, 8, 2, false), (8, 8, 2, false), (8, 2, 1, true)] {
                let case = Case { batch, seq, heads, kv_heads, head_dim, bhsd };
                let outcome = run_case::<T>(device, &case, seed.wrapping_add(seq as u64 * 1000 + head_dim as u64));
                worst = worst.max(outcome.out_error);
                let ok = outcome.out_error <= TOLERANCE && outcome.lse_error <= 1e-2;
                println!(
                    "{} {}: rel_l2 {:.2e}, lse max abs {:.1e}",
                    if ok { "ok  " } else { "FAIL" },
                    describe::<T>(&case),
                    outcome.out_error,
                    outcome.lse_error
                );
                if !ok {
                    failures.push(describe::<T>(&case));
                }
            }
        }
    }
    println!("{}: worst rel_l2 {worst:.2e} on {}", T::DTYPE, device.name());
    assert!(failures.is_empty(), "cases over tolerance {TOLERANCE}: {failures:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_bf16_matches_reference() {
    matrix_for::<bf16>(&device());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_f16_matches_reference() {
    matrix_for::<f16>(&device());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn explicit_specs_agree_with_the_default() {
    let device = device();
    let case = Case { batch: 1, seq: 777, heads: 4, kv_heads: 2, head_dim: 128, bhsd: false };
    // Tiles of the mma.sync engine (every arch), and on sm_90a two more of the wgmma engine (which
    // needs 16 rows per warp and at least two stages).
    let mut tiles =
        vec![(128, 64, 8, 2, Mainloop::MmaSync), (64, 32, 4, 1, Mainloop::MmaSync), (128, 32, 4, 3, Mainloop::MmaSync)];
    if device.arch() == Arch::Sm90a {
        tiles.extend([(64, 128, 4, 2, Mainloop::Wgmma), (128, 128, 8, 3, Mainloop::Wgmma)]);
        tiles.extend([
            (128, 128, 8, 2, Mainloop::WgmmaTma),
            (64, 128, 4, 2, Mainloop::WgmmaTma),
            (128, 128, 8, 3, Mainloop::WgmmaTma),
            (128, 128, 8, 2, Mainloop::WgmmaTmaPingPong),
            (128, 128, 8, 3, Mainloop::WgmmaTmaPingPong),
            (128, 128, 8, 2, Mainloop::WgmmaTmaOverlap),
            (64, 128, 4, 2, Mainloop::WgmmaTmaOverlap),
        ]);
    }
    for (block_m, block_n, warps, stages, mainloop) in tiles {
        let spec = KernelSpec {
            block_m,
            block_n,
            warps,
            stages,
            mainloop,
            ..KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, device.arch())
        };
        let seed = test_seed("explicit_specs_agree_with_the_default");
        let q_layout = Layout::bshd([1, 777, 4, 128]);
        let kv_layout = Layout::bshd([1, 777, 2, 128]);
        let stream = device.stream();
        let q = stream
            .clone_htod(&random_normal(q_layout.span(), seed).into_iter().map(bf16::from_f32).collect::<Vec<_>>())
            .expect("q");
        let k = stream
            .clone_htod(&random_normal(kv_layout.span(), seed + 1).into_iter().map(bf16::from_f32).collect::<Vec<_>>())
            .expect("k");
        let v = stream
            .clone_htod(&random_normal(kv_layout.span(), seed + 2).into_iter().map(bf16::from_f32).collect::<Vec<_>>())
            .expect("v");
        let mut a = stream.alloc_zeros::<bf16>(q_layout.span()).expect("a");
        let mut b = stream.alloc_zeros::<bf16>(q_layout.span()).expect("b");
        let views = |t| TensorRef::new(t, q_layout).expect("view");
        dense_attention(
            &device,
            views(&q),
            TensorRef::new(&k, kv_layout).expect("k"),
            TensorRef::new(&v, kv_layout).expect("v"),
            TensorMut::new(&mut a, q_layout).expect("a"),
            AttentionOptions::default(),
        )
        .expect("default");
        dense_attention(
            &device,
            views(&q),
            TensorRef::new(&k, kv_layout).expect("k"),
            TensorRef::new(&v, kv_layout).expect("v"),
            TensorMut::new(&mut b, q_layout).expect("b"),
            AttentionOptions { spec: Some(spec), ..Default::default() },
        )
        .expect("explicit");
        let a: Vec<f64> = stream.clone_dtoh(&a).expect("a").iter().map(|x| x.to_f64()).collect();
        let b: Vec<f64> = stream.clone_dtoh(&b).expect("b").iter().map(|x| x.to_f64()).collect();
        let err = relative_l2(&b, &a);
        println!("{}: rel_l2 vs default {err:.2e} ({})", spec.kernel_name(), case.seq);
        assert!(err < 5e-3, "{} disagrees with the default kernel: {err}", spec.kernel_name());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mismatched_shapes_are_rejected_before_launch() {
    let device = device();
    let stream = device.stream();
    let q = stream.alloc_zeros::<bf16>(2 * 16 * 4 * 64).expect("q");
    let k = stream.alloc_zeros::<bf16>(2 * 16 * 3 * 64).expect("k");
    let mut o = stream.alloc_zeros::<bf16>(2 * 16 * 4 * 64).expect("o");
    let err = dense_attention(
        &device,
        TensorRef::bshd(&q, [2, 16, 4, 64]).expect("q"),
        TensorRef::bshd(&k, [2, 16, 3, 64]).expect("k"),
        TensorRef::bshd(&k, [2, 16, 3, 64]).expect("v"),
        TensorMut::bshd(&mut o, [2, 16, 4, 64]).expect("o"),
        AttentionOptions::default(),
    )
    .expect_err("4 query heads over 3 kv heads must be rejected");
    assert!(err.to_string().contains("not a multiple"), "{err}");
    assert!(TensorRef::bshd(&q, [2, 16, 4, 128]).is_err(), "a view larger than its buffer must be rejected");
}
