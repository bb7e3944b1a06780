//! GPU tests of the vertical-slash scores (`minf::estimate::gpu::vertical_slash_scores_gpu`):
//! every (batch, head)'s vertical and slash arrays against the f64 CPU reference
//! (`minf::estimate::cpu::vertical_slash_scores`) on structured inputs, and the time at 128K.

use super::{device, fresh_seed};
use half::{bf16, f16};
use minf::estimate::cpu::vertical_slash_scores;
use minf::estimate::gpu::{vertical_slash_scores_gpu, ScoresWorkspace};
use minf::reference::relative_l2;
use minf::timing::median_ms;
use minf::{AttentionElement, Device, InputSpec, ReferenceShape, StructuredInputs, TensorRef};

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
fn check_case<T: AttentionElement>(
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
    let seed = fresh_seed();
    println!("seed {seed}");
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
