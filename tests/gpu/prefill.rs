//! GPU tests of the per-layer prefill (`minf::prefill`): head-map launches against launches over
//! every head, and whole layers of a config with all three sparse patterns against the float64
//! reference under each head's realised mask; chunks after a prefix (`prefill_chunk`, with the
//! LSE) under their realised masks, and whole prompts chunk by chunk (`prefill_chunked`) against
//! one-shot prefill.

use super::{device, reference_rows, test_seed, upload, TOLERANCE};
use half::bf16;
use minf::config::{ModelShape, PatternConfig};
use minf::tensor::Layout;
use minf::{
    attention, AShape, AttentionElement, AttentionOptions, Device, HeadSubset, IndexShape, PatternArgs, Prefill,
    PrefillOptions, TensorMut, TensorRef, VerticalSlashIndex,
};
use minf_testkit::inputs::{InputSpec, StructuredInputs};
use minf_testkit::reference::{masked_attention_rows, random_normal, relative_l2, ReferenceShape};

/// Eight heads over two KV heads. Layer 0 runs dense (below the starting layer); layer 1 mixes
/// every pattern: heads 0 and 5 A-shape (16, 128), head 2 A-shape (4, 300), heads 1 and 6
/// block-sparse, head 3 vertical-slash (40, 60), heads 4 and 7 missing (the vertical-slash
/// fallback (1000, 6096)); layer 2 is all vertical-slash with small sizes.
const ALL_PATTERNS: &str = r#"[
    {},
    {"0": ["stream_llm", 16, 128, 1], "5": ["stream_llm", 16, 128, 1], "2": ["stream_llm", 4, 300, 1],
     "1": ["block_sparse", 0, 0, 1], "6": ["block_sparse", 0, 0, 1], "3": ["vertical_and_slash", 40, 60, 1]},
    {"0": ["vertical_and_slash", 30, 50, 1], "1": ["vertical_and_slash", 30, 50, 1],
     "2": ["vertical_and_slash", 64, 100, 1], "3": ["vertical_and_slash", 64, 100, 1],
     "4": ["vertical_and_slash", 30, 200, 1], "5": ["vertical_and_slash", 30, 200, 1],
     "6": ["vertical_and_slash", 100, 50, 1], "7": ["vertical_and_slash", 100, 50, 1]}
]"#;

pub(super) const SHAPE: ModelShape = ModelShape { layers: 3, heads: 8, kv_heads: 2, head_dim: 128 };

pub(super) fn config() -> PatternConfig {
    PatternConfig::parse(ALL_PATTERNS, "all_patterns.json", SHAPE.heads).expect("config").with_starting_layer(1)
}

fn poisoned<T: AttentionElement>(device: &Device, len: usize) -> cudarc::driver::CudaSlice<T> {
    device.stream().clone_htod(&vec![T::from_f32(f32::NAN); len]).expect("upload poison")
}

fn download(device: &Device, buffer: &cudarc::driver::CudaSlice<bf16>) -> Vec<f32> {
    device.stream().clone_dtoh(buffer).expect("download").into_iter().map(|x| x.to_f32()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn head_map_launches_equal_launches_over_every_head() {
    let device = device();
    let seed = test_seed("head_map_launches_equal_launches_over_every_head");
    let (seq, heads, kv_heads, d) = (1000, 8, 2, 128);
    let q = upload::<bf16>(&device, &random_normal(seq * heads * d, seed));
    let k = upload::<bf16>(&device, &random_normal(seq * kv_heads * d, seed ^ 1));
    let v = upload::<bf16>(&device, &random_normal(seq * kv_heads * d, seed ^ 2));
    let (q_shape, kv_shape) = ([1, seq, heads, d], [1, seq, kv_heads, d]);
    // A vertical-slash index whose every row block lists its diagonal range and column 0.
    let rows = seq.div_ceil(64);
    let shape = IndexShape { batch: 1, heads, rows, nnz_s: 1, nnz_v: 1 };
    let stream = device.stream();
    let index = VerticalSlashIndex::from_parts(
        shape,
        stream.clone_htod(&vec![1i32; heads * rows]).expect("counts"),
        stream.clone_htod(&(0..heads * rows).map(|x| ((x % rows) * 64) as i32).collect::<Vec<_>>()).expect("ranges"),
        stream.clone_htod(&vec![1i32; heads * rows]).expect("counts"),
        stream.clone_htod(&vec![0i32; heads * rows]).expect("columns"),
    )
    .expect("index");
    let subset_heads = [5usize, 0, 6, 3];
    let subset = HeadSubset::new(&device, &subset_heads, heads).expect("subset");
    for args in [
        PatternArgs::Dense,
        PatternArgs::AShape(AShape { n_init: 8, n_local: 100 }),
        PatternArgs::VerticalSlash(index.as_ref()),
    ] {
        let run = |heads_option: Option<&HeadSubset>| {
            let mut out = poisoned::<bf16>(&device, seq * heads * d);
            attention(
                &device,
                TensorRef::bshd(&q, q_shape).expect("q"),
                TensorRef::bshd(&k, kv_shape).expect("k"),
                TensorRef::bshd(&v, kv_shape).expect("v"),
                TensorMut::bshd(&mut out, q_shape).expect("out"),
                args,
                AttentionOptions { heads: heads_option, ..Default::default() },
            )
            .expect("launch");
            download(&device, &out)
        };
        let (all, some) = (run(None), run(Some(&subset)));
        for t in 0..seq {
            for h in 0..heads {
                let at = (t * heads + h) * d;
                let (want, got) = (&all[at..at + d], &some[at..at + d]);
                if subset_heads.contains(&h) {
                    assert!(
                        want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{:?}: row {t} head {h} differs with the head map",
                        args.pattern()
                    );
                } else {
                    assert!(
                        got.iter().all(|x| x.is_nan()),
                        "{:?}: head {h} is not in the map but was written",
                        args.pattern()
                    );
                }
            }
        }
    }
    // A subset checked against another head count is refused before launching.
    let other = HeadSubset::new(&device, &[0], 4).expect("subset of 4");
    let mut out = poisoned::<bf16>(&device, seq * heads * d);
    let error = attention(
        &device,
        TensorRef::bshd(&q, q_shape).expect("q"),
        TensorRef::bshd(&k, kv_shape).expect("k"),
        TensorRef::bshd(&v, kv_shape).expect("v"),
        TensorMut::bshd(&mut out, q_shape).expect("out"),
        PatternArgs::Dense,
        AttentionOptions { heads: Some(&other), ..Default::default() },
    )
    .expect_err("mismatched subset");
    assert!(error.to_string().contains("checked against 4 query heads but q has 8"), "{error}");
}

/// Runs `layer` of the all-patterns config through the prefill on structured inputs and compares
/// every head with the float64 reference under the realised mask; returns the relative L2 error.
pub(super) fn check_layer(device: &Device, prefill: &mut Prefill<'_>, layer: usize, seq: usize, seed: u64) -> f64 {
    let ModelShape { heads, kv_heads, head_dim, .. } = SHAPE;
    let d = head_dim as usize;
    let inputs = StructuredInputs::generate(&InputSpec::new(seq, heads, kv_heads, d, seed)).expect("inputs");
    let round = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
    let (q_host, k_host, v_host) = (round(&inputs.q), round(&inputs.k), round(&inputs.v));
    let (q, k, v) = (upload::<bf16>(device, &q_host), upload::<bf16>(device, &k_host), upload::<bf16>(device, &v_host));
    let mut out = poisoned::<bf16>(device, seq * heads * d);
    let (q_shape, kv_shape) = ([1, seq, heads, d], [1, seq, kv_heads, d]);
    prefill
        .prefill(
            layer,
            TensorRef::bshd(&q, q_shape).expect("q"),
            TensorRef::bshd(&k, kv_shape).expect("k"),
            TensorRef::bshd(&v, kv_shape).expect("v"),
            TensorMut::bshd(&mut out, q_shape).expect("out"),
        )
        .expect("prefill");
    let got = download(device, &out);
    assert!(got.iter().all(|x| !x.is_nan()), "layer {layer} seq {seq}: an output element was not written");
    let mask = prefill.realised_mask().expect("mask");
    let shape = ReferenceShape { batch: 1, seq, heads, kv_heads, head_dim: d };
    let rows = reference_rows(seq);
    let reference =
        masked_attention_rows(shape, &q_host, &k_host, &v_host, 1.0 / (d as f64).sqrt(), &rows, |b, h, i, j| {
            mask.contains(b, h, i, j)
        });
    let got_rows: Vec<f64> = reference
        .rows
        .iter()
        .flat_map(|&(_, i, h)| got[(i * heads + h) * d..][..d].iter().map(|&x| x as f64))
        .collect();
    relative_l2(&got_rows, &reference.out)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prefill_of_every_pattern_matches_the_reference_under_the_realised_mask() {
    let device = device();
    let seed = test_seed("prefill_of_every_pattern_matches_the_reference_under_the_realised_mask");
    // Sparse at every length, so the small cases exercise the estimation and every pattern.
    let options = PrefillOptions { dense_below: 0, dense_chunks_below: 0, ..PrefillOptions::default() };
    let mut prefill = Prefill::new(&device, &config(), SHAPE, options).expect("prefill");
    for seq in [1000, 4097] {
        for layer in [0, 1, 2] {
            let error = check_layer(&device, &mut prefill, layer, seq, seed);
            println!("layer {layer} seq {seq}: rel L2 {error:.2e}");
            assert!(error <= TOLERANCE, "layer {layer} seq {seq}: rel L2 {error:.2e} (seed {seed})");
            let mask = prefill.realised_mask().expect("mask");
            if layer == 1 {
                // The A-shape and block-sparse heads are sparse at 4097 tokens.
                assert!(seq < 4097 || mask.density(&[0, 1, 2]) < 0.9, "density {}", mask.density(&[0, 1, 2]));
            }
        }
    }
    // Warm calls reuse the indices: the device memory held stays the same.
    let held = prefill.device_bytes();
    check_layer(&device, &mut prefill, 1, 4097, seed ^ 7);
    assert_eq!(prefill.device_bytes(), held);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn short_prompts_fall_back_to_dense_and_calls_are_validated() {
    let device = device();
    let seed = test_seed("short_prompts_fall_back_to_dense_and_calls_are_validated");
    let options = PrefillOptions { dense_below: 2048, ..PrefillOptions::default() };
    let mut prefill = Prefill::new(&device, &config(), SHAPE, options).expect("prefill");
    let error = check_layer(&device, &mut prefill, 1, 1000, seed);
    assert!(error <= TOLERANCE, "rel L2 {error:.2e} (seed {seed})");
    let mask = prefill.realised_mask().expect("mask");
    assert_eq!(mask.density(&[]), 1.0, "a prompt below the threshold runs dense");
    // Timed: the split adds up and the attention takes time.
    let (seq, d) = (1000, SHAPE.head_dim as usize);
    let q = upload::<bf16>(&device, &random_normal(seq * SHAPE.heads * d, seed));
    let kv = upload::<bf16>(&device, &random_normal(seq * SHAPE.kv_heads * d, seed ^ 1));
    let mut out = poisoned::<bf16>(&device, seq * SHAPE.heads * d);
    let (q_shape, kv_shape) = ([1, seq, SHAPE.heads, d], [1, seq, SHAPE.kv_heads, d]);
    let timing = prefill
        .prefill_timed(
            2,
            TensorRef::bshd(&q, q_shape).expect("q"),
            TensorRef::bshd(&kv, kv_shape).expect("k"),
            TensorRef::bshd(&kv, kv_shape).expect("v"),
            TensorMut::bshd(&mut out, q_shape).expect("out"),
        )
        .expect("timed prefill");
    assert!(timing.attention_ms > 0.0 && timing.total_ms >= timing.attention_ms, "{timing:?}");
    let error = prefill
        .prefill(
            3,
            TensorRef::bshd(&q, q_shape).expect("q"),
            TensorRef::bshd(&kv, kv_shape).expect("k"),
            TensorRef::bshd(&kv, kv_shape).expect("v"),
            TensorMut::bshd(&mut out, q_shape).expect("out"),
        )
        .expect_err("layer 3 of 3");
    assert!(error.to_string().contains("layer 3 is out of range"), "{error}");
    let error = prefill
        .prefill(
            0,
            TensorRef::bshd(&kv, kv_shape).expect("q"),
            TensorRef::bshd(&kv, kv_shape).expect("k"),
            TensorRef::bshd(&kv, kv_shape).expect("v"),
            TensorMut::bshd(&mut out, q_shape).expect("out"),
        )
        .expect_err("q with kv heads");
    assert!(error.to_string().contains("q has shape"), "{error}");
}

// ---- Chunked prefill: a chunk after a prefix, and whole prompts chunk by chunk ----

/// Structured bf16-rounded inputs of `kv_len` tokens (q for every position, k, v) on the host.
fn prompt(kv_len: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let ModelShape { heads, kv_heads, head_dim, .. } = SHAPE;
    let inputs =
        StructuredInputs::generate(&InputSpec::new(kv_len, heads, kv_heads, head_dim as usize, seed)).expect("inputs");
    let round = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
    (round(&inputs.q), round(&inputs.k), round(&inputs.v))
}

/// Runs `layer` on the chunk of the last `q_len` of `prefix + q_len` tokens through
/// `Prefill::prefill_chunk` with the LSE and compares every head with the float64 reference under
/// the realised mask (absolute positions); returns the output's and the LSE's relative L2 errors.
pub(super) fn check_chunk(
    device: &Device,
    prefill: &mut Prefill<'_>,
    layer: usize,
    (q_len, prefix): (usize, usize),
    seed: u64,
) -> (f64, f64) {
    let ModelShape { heads, kv_heads, head_dim, .. } = SHAPE;
    let (d, kv_len) = (head_dim as usize, prefix + q_len);
    let (q_all, k_host, v_host) = prompt(kv_len, seed);
    let q_chunk = &q_all[prefix * heads * d..];
    let (q, k, v) = (upload::<bf16>(device, q_chunk), upload::<bf16>(device, &k_host), upload::<bf16>(device, &v_host));
    let mut out = poisoned::<bf16>(device, q_len * heads * d);
    let mut lse = device.stream().clone_htod(&vec![f32::NAN; heads * q_len]).expect("upload lse poison");
    let (q_shape, kv_shape) = ([1, q_len, heads, d], [1, kv_len, kv_heads, d]);
    prefill
        .prefill_chunk(
            layer,
            TensorRef::bshd(&q, q_shape).expect("q"),
            TensorRef::bshd(&k, kv_shape).expect("k"),
            TensorRef::bshd(&v, kv_shape).expect("v"),
            TensorMut::bshd(&mut out, q_shape).expect("out"),
            Some(&mut lse),
        )
        .expect("prefill_chunk");
    let got = download(device, &out);
    let got_lse = device.stream().clone_dtoh(&lse).expect("download lse");
    let what = format!("layer {layer} q_len {q_len} after {prefix}");
    assert!(got.iter().all(|x| !x.is_nan()), "{what}: an output element was not written");
    assert!(got_lse.iter().all(|x| !x.is_nan()), "{what}: an LSE element was not written");
    let mask = prefill.realised_mask().expect("mask");
    assert_eq!((mask.seq, mask.q_offset), (kv_len, prefix), "{what}: the mask's positions");
    // Reference rows at absolute positions; q holds every position, the chunk's are the last.
    let shape = ReferenceShape { batch: 1, seq: kv_len, heads, kv_heads, head_dim: d };
    let rows: Vec<usize> = reference_rows(q_len).into_iter().map(|i| prefix + i).collect();
    let reference =
        masked_attention_rows(shape, &q_all, &k_host, &v_host, 1.0 / (d as f64).sqrt(), &rows, |b, h, i, j| {
            mask.contains(b, h, i, j)
        });
    let got_rows: Vec<f64> = reference
        .rows
        .iter()
        .flat_map(|&(_, p, h)| got[((p - prefix) * heads + h) * d..][..d].iter().map(|&x| x as f64))
        .collect();
    let got_lse_rows: Vec<f64> =
        reference.rows.iter().map(|&(_, p, h)| got_lse[h * q_len + p - prefix] as f64).collect();
    (relative_l2(&got_rows, &reference.out), relative_l2(&got_lse_rows, &reference.lse))
}

/// Chunks of the issue's q_len after prefixes that are not multiples of 64 (and one that is).
const CHUNKS: [(usize, usize); 6] = [(1, 1000), (63, 2000), (64, 1037), (65, 4133), (1000, 3037), (1000, 2048)];

#[test]
#[ignore = "needs a CUDA GPU"]
fn chunked_prefill_of_every_pattern_matches_the_reference_under_the_realised_mask() {
    let device = device();
    let seed = test_seed("chunked_prefill_of_every_pattern_matches_the_reference_under_the_realised_mask");
    // Sparse at every length, so every chunk exercises its estimation and every pattern.
    let options = PrefillOptions { dense_below: 0, dense_chunks_below: 0, ..PrefillOptions::default() };
    let mut prefill = Prefill::new(&device, &config(), SHAPE, options).expect("prefill");
    for (i, &chunk) in CHUNKS.iter().enumerate() {
        for layer in [0, 1, 2] {
            let (error, lse_error) = check_chunk(&device, &mut prefill, layer, chunk, seed + i as u64);
            println!("layer {layer} chunk {chunk:?}: rel L2 {error:.2e}, LSE rel L2 {lse_error:.2e}");
            assert!(error <= TOLERANCE, "layer {layer} chunk {chunk:?}: rel L2 {error:.2e} (seed {seed})");
            assert!(lse_error <= 1e-3, "layer {layer} chunk {chunk:?}: LSE rel L2 {lse_error:.2e} (seed {seed})");
            if layer == 1 && chunk.0 >= 64 {
                let mask = prefill.realised_mask().expect("mask");
                assert!(mask.density(&[0, 1, 2]) < 0.9, "chunk {chunk:?}: density {}", mask.density(&[0, 1, 2]));
            }
        }
    }
    // The dense fallback: kv_len below dense_below, or q_len below dense_chunks_below (here 64: a
    // one-token chunk after 5000 tokens runs dense, one of 64 sparse).
    let options = PrefillOptions { dense_below: 4096, dense_chunks_below: 64, ..PrefillOptions::default() };
    let mut prefill = Prefill::new(&device, &config(), SHAPE, options).expect("prefill");
    for (chunk, dense) in [((64, 5000), false), ((1, 5000), true), ((1000, 3000), true)] {
        let (error, lse_error) = check_chunk(&device, &mut prefill, 1, chunk, seed);
        assert!(error <= TOLERANCE && lse_error <= 1e-3, "chunk {chunk:?}: {error:.2e}, LSE {lse_error:.2e}");
        let density = prefill.realised_mask().expect("mask").density(&[0, 2]);
        assert_eq!(density == 1.0, dense, "chunk {chunk:?}: A-shape heads' density {density}");
    }
}

/// Runs `layer` over a whole prompt of `seq` tokens one-shot, through `prefill_chunked` and
/// through a loop of `prefill_chunk` calls; returns the three outputs. Also runs
/// `prefill_chunked_timed` and checks that it computes what `prefill_chunked` does and splits its
/// time.
fn one_shot_and_chunked(
    device: &Device,
    prefill: &mut Prefill<'_>,
    layer: usize,
    (seq, chunk_tokens): (usize, usize),
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let ModelShape { heads, kv_heads, head_dim, .. } = SHAPE;
    let d = head_dim as usize;
    let (q_host, k_host, v_host) = prompt(seq, seed);
    let (q, k, v) = (upload::<bf16>(device, &q_host), upload::<bf16>(device, &k_host), upload::<bf16>(device, &v_host));
    let (q_shape, kv_shape) = ([1, seq, heads, d], [1, seq, kv_heads, d]);
    let views = || {
        (
            TensorRef::bshd(&q, q_shape).expect("q"),
            TensorRef::bshd(&k, kv_shape).expect("k"),
            TensorRef::bshd(&v, kv_shape).expect("v"),
        )
    };
    let mut one_shot = poisoned::<bf16>(device, seq * heads * d);
    let (qv, kv, vv) = views();
    prefill.prefill(layer, qv, kv, vv, TensorMut::bshd(&mut one_shot, q_shape).expect("out")).expect("one-shot");
    let mut chunked = poisoned::<bf16>(device, seq * heads * d);
    let (qv, kv, vv) = views();
    prefill
        .prefill_chunked(layer, qv, kv, vv, TensorMut::bshd(&mut chunked, q_shape).expect("out"), chunk_tokens)
        .expect("chunked");
    let mut timed = poisoned::<bf16>(device, seq * heads * d);
    let (qv, kv, vv) = views();
    let timing = prefill
        .prefill_chunked_timed(layer, qv, kv, vv, TensorMut::bshd(&mut timed, q_shape).expect("out"), chunk_tokens)
        .expect("chunked, timed");
    let timed_error = relative_l2(&widen(&download(device, &timed)), &widen(&download(device, &chunked)));
    assert!(timed_error <= TOLERANCE, "the timed driver differs from the untimed one: rel L2 {timed_error:.2e}");
    let parts = timing.estimation_ms + timing.conversion_ms + timing.attention_ms;
    assert!(timing.attention_ms > 0.0 && timing.estimation_ms >= -1e-3 && timing.conversion_ms >= 0.0, "{timing:?}");
    assert!(
        (parts - timing.total_ms).abs() <= 1e-3 * timing.total_ms.max(1.0),
        "the parts add up to the total: {timing:?}"
    );
    // The same chunks by hand: each chunk's queries copied out, its keys the buffer's first tokens.
    let mut manual = vec![0.0f32; seq * heads * d];
    for start in (0..seq).step_by(chunk_tokens) {
        let end = (start + chunk_tokens).min(seq);
        let q_chunk = upload::<bf16>(device, &q_host[start * heads * d..end * heads * d]);
        let mut out = poisoned::<bf16>(device, (end - start) * heads * d);
        let prefix_kv = Layout { shape: [1, end, kv_heads, d], strides: Layout::bshd(kv_shape).strides };
        prefill
            .prefill_chunk(
                layer,
                TensorRef::bshd(&q_chunk, [1, end - start, heads, d]).expect("q chunk"),
                TensorRef::new(&k, prefix_kv).expect("k prefix"),
                TensorRef::new(&v, prefix_kv).expect("v prefix"),
                TensorMut::bshd(&mut out, [1, end - start, heads, d]).expect("out chunk"),
                None,
            )
            .expect("prefill_chunk");
        manual[start * heads * d..end * heads * d].copy_from_slice(&download(device, &out));
    }
    (download(device, &one_shot), download(device, &chunked), manual)
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_chunked_prefill_equals_one_shot() {
    let device = device();
    let seed = test_seed("dense_chunked_prefill_equals_one_shot");
    let options = PrefillOptions { dense_below: 0, dense_chunks_below: 0, ..PrefillOptions::default() };
    let mut prefill = Prefill::new(&device, &config(), SHAPE, options).expect("prefill");
    // Layer 0 is below the config's starting layer: every head dense.
    for (seq, chunk_tokens) in [(4097, 1000), (4097, 64), (3000, 4097), (2000, 1)] {
        let (one_shot, chunked, manual) = one_shot_and_chunked(&device, &mut prefill, 0, (seq, chunk_tokens), seed);
        assert!(chunked.iter().all(|x| !x.is_nan()), "seq {seq} chunks of {chunk_tokens}: an element was not written");
        let error = relative_l2(&widen(&chunked), &widen(&one_shot));
        println!("dense seq {seq} chunks of {chunk_tokens}: chunked vs one-shot rel L2 {error:.2e}");
        assert!(error <= TOLERANCE, "seq {seq} chunks of {chunk_tokens}: rel L2 {error:.2e} (seed {seed})");
        let manual_error = relative_l2(&widen(&manual), &widen(&chunked));
        assert!(manual_error <= TOLERANCE, "the driver differs from its chunks by hand: {manual_error:.2e}");
    }
}

/// `[b, s, h, d]` data reordered as `[b, h, s, d]`, or back with `back`.
fn reorder_bshd_bhsd(x: &[f32], [b, s, h, d]: [usize; 4], back: bool) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let bshd = ((bi * s + si) * h + hi) * d;
                let bhsd = ((bi * h + hi) * s + si) * d;
                let (from, to) = if back { (bhsd, bshd) } else { (bshd, bhsd) };
                y[to..to + d].copy_from_slice(&x[from..from + d]);
            }
        }
    }
    y
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn chunked_prefill_reads_and_writes_strided_batches_in_place() {
    let device = device();
    let seed = test_seed("chunked_prefill_reads_and_writes_strided_batches_in_place");
    let options = PrefillOptions { dense_below: 0, dense_chunks_below: 0, ..PrefillOptions::default() };
    let mut prefill = Prefill::new(&device, &config(), SHAPE, options).expect("prefill");
    let ModelShape { heads, kv_heads, head_dim, .. } = SHAPE;
    let (batch, seq, chunk_tokens, d) = (2, 3001, 700, head_dim as usize);
    // Two different prompts, stored [batch, seq, heads, d] for k and v and [batch, heads, seq, d]
    // for q and out: every chunk's rows are strided views of the whole tensors.
    let (mut q_host, mut k_host, mut v_host) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..batch as u64 {
        let (q, k, v) = prompt(seq, seed ^ (b << 8));
        q_host.extend(q);
        k_host.extend(k);
        v_host.extend(v);
    }
    let (q_shape, kv_shape) = ([batch, seq, heads, d], [batch, seq, kv_heads, d]);
    let q_bhsd = upload::<bf16>(&device, &reorder_bshd_bhsd(&q_host, q_shape, false));
    let q_bshd = upload::<bf16>(&device, &q_host);
    let (k, v) = (upload::<bf16>(&device, &k_host), upload::<bf16>(&device, &v_host));
    let kv = || (TensorRef::bshd(&k, kv_shape).expect("k"), TensorRef::bshd(&v, kv_shape).expect("v"));
    let bhsd = Layout::bhsd(q_shape);
    // Layer 0 runs dense: chunked equals one-shot. Layer 2 runs vertical-slash: the strided
    // chunks equal the contiguous ones.
    for layer in [0, 2] {
        let mut strided = poisoned::<bf16>(&device, batch * seq * heads * d);
        let (k_all, v_all) = kv();
        prefill
            .prefill_chunked(
                layer,
                TensorRef::new(&q_bhsd, bhsd).expect("q"),
                k_all,
                v_all,
                TensorMut::new(&mut strided, bhsd).expect("out"),
                chunk_tokens,
            )
            .expect("chunked, strided");
        let strided = reorder_bshd_bhsd(&download(&device, &strided), q_shape, true);
        assert!(strided.iter().all(|x| !x.is_nan()), "layer {layer}: an element was not written");
        let mut expected = poisoned::<bf16>(&device, batch * seq * heads * d);
        let (k_all, v_all) = kv();
        let q = TensorRef::bshd(&q_bshd, q_shape).expect("q");
        let out = TensorMut::bshd(&mut expected, q_shape).expect("out");
        if layer == 0 {
            prefill.prefill(layer, q, k_all, v_all, out).expect("one-shot");
        } else {
            prefill.prefill_chunked(layer, q, k_all, v_all, out, chunk_tokens).expect("chunked, contiguous");
        }
        let error = relative_l2(&widen(&strided), &widen(&download(&device, &expected)));
        println!("layer {layer}: strided chunks of batch {batch} vs expected rel L2 {error:.2e}");
        assert!(error <= TOLERANCE, "layer {layer}: rel L2 {error:.2e} (seed {seed})");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_chunked_prefill_runs_its_chunks() {
    let device = device();
    let seed = test_seed("sparse_chunked_prefill_runs_its_chunks");
    let options = PrefillOptions { dense_below: 0, dense_chunks_below: 0, ..PrefillOptions::default() };
    let mut prefill = Prefill::new(&device, &config(), SHAPE, options).expect("prefill");
    for layer in [1, 2] {
        let (_, chunked, manual) = one_shot_and_chunked(&device, &mut prefill, layer, (4097, 1000), seed);
        assert!(chunked.iter().all(|x| !x.is_nan()), "layer {layer}: an element was not written");
        // The same estimates and kernels on the same chunks.
        let error = relative_l2(&widen(&chunked), &widen(&manual));
        println!("layer {layer}: driver vs chunks by hand rel L2 {error:.2e}");
        assert!(error <= TOLERANCE, "layer {layer}: rel L2 {error:.2e} (seed {seed})");
    }
    // Per-chunk scratch: indices of one chunk's rows, not of the prompt.
    let index = prefill.vertical_slash_index().expect("an index");
    assert_eq!(index.shape().rows, 97_usize.div_ceil(64), "the last chunk (97 queries) sized the index");
    let error = {
        let d = SHAPE.head_dim as usize;
        let q = upload::<bf16>(&device, &vec![0.0; 10 * SHAPE.heads * d]);
        let kv = upload::<bf16>(&device, &vec![0.0; 10 * SHAPE.kv_heads * d]);
        let mut out = poisoned::<bf16>(&device, 10 * SHAPE.heads * d);
        prefill
            .prefill_chunked(
                1,
                TensorRef::bshd(&q, [1, 10, SHAPE.heads, d]).expect("q"),
                TensorRef::bshd(&kv, [1, 10, SHAPE.kv_heads, d]).expect("k"),
                TensorRef::bshd(&kv, [1, 10, SHAPE.kv_heads, d]).expect("v"),
                TensorMut::bshd(&mut out, [1, 10, SHAPE.heads, d]).expect("out"),
                0,
            )
            .expect_err("chunks of 0 tokens")
    };
    assert!(error.to_string().contains("chunk_tokens must be at least 1"), "{error}");
}
