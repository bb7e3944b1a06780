//! GPU tests of the tensor-map engines' (`wgmma_tma`, `wgmma_tma_pingpong`, `wgmma_tma_overlap`)
//! dense kernels against the float64 reference: every head
//! dimension it takes, lengths on and off the 64- and 128-key boundaries (so whole tiles arrive by
//! tensor map and edge tiles by `cp.async` in one launch), BSHD and BHSD layouts, GQA groupings,
//! and a packed batch of sequences whose neighbours sit inside the tensors. The sparse patterns,
//! chunks (causal and not), and the sanitizer sweep run the engine through the `WgmmaTma*`
//! variants of `patterns.rs`, `chunked.rs` and `sanitize.rs`.

use super::patterns::packed_offsets;
use super::{check_attention, describe, device, test_seed, Case, Outcome, Packed, TOLERANCE};
use half::{bf16, f16};
use minf::codegen::{Arch, DType, KernelSpec, Mainloop, Pattern};
use minf::tensor::Layout;
use minf::{AttentionElement, AttentionOptions, Device, PatternArgs, TensorMut, TensorRef, Varlen};
use minf_testkit::reference::random_normal;

/// The dense specs on tensor-map engines for `head_dim`: `wgmma_tma` on the default tile and on
/// 64x128 blocks (one consumer warpgroup, two blocks per SM), `wgmma_tma_pingpong`, and
/// `wgmma_tma_overlap` on both block heights.
fn tma_specs<T: AttentionElement>(device: &Device, head_dim: usize) -> [KernelSpec; 5] {
    let base = KernelSpec::default_for(Pattern::Dense, T::DTYPE, head_dim as u32, device.arch());
    let spec = |block_m, warps, mainloop| KernelSpec { block_m, block_n: 128, warps, stages: 2, mainloop, ..base };
    [
        spec(128, 8, Mainloop::WgmmaTma),
        spec(64, 4, Mainloop::WgmmaTma),
        spec(128, 8, Mainloop::WgmmaTmaPingPong),
        spec(128, 8, Mainloop::WgmmaTmaOverlap),
        spec(64, 4, Mainloop::WgmmaTmaOverlap),
    ]
}

fn record(what: String, outcome: &Outcome, failures: &mut Vec<String>) {
    let ok = outcome.out_error <= TOLERANCE && outcome.lse_error <= 1e-2;
    println!(
        "{} {what}: rel_l2 {:.2e}, lse max abs {:.1e}",
        if ok { "ok  " } else { "FAIL" },
        outcome.out_error,
        outcome.lse_error
    );
    if !ok {
        failures.push(what);
    }
}

fn dense_for<T: AttentionElement>(device: &Device, failures: &mut Vec<String>) {
    let seed = test_seed(&format!("wgmma_tma dense {}", T::DTYPE));
    let head_dims: &[usize] = if T::DTYPE == minf::codegen::DType::Bf16 { &[64, 96, 128] } else { &[128] };
    for &head_dim in head_dims {
        for (n, &seq) in [1usize, 63, 64, 65, 127, 128, 129, 1000, 4097, 8256].iter().enumerate() {
            let (heads, kv_heads, batch, bhsd) = [(32, 8, 2, false), (8, 8, 2, true), (8, 2, 1, true)][n % 3];
            let case = Case { batch, seq, heads, kv_heads, head_dim, bhsd };
            for spec in tma_specs::<T>(device, head_dim) {
                let o = check_attention::<T>(
                    device,
                    &case,
                    seed.wrapping_add((seq * 1000 + head_dim) as u64),
                    Some(spec),
                    PatternArgs::Dense,
                    None,
                    &|_, _, i, j| j <= i,
                );
                record(format!("{} {}", spec.kernel_name(), describe::<T>(&case)), &o, failures);
            }
        }
        // A packed batch: sequence ends that are not multiples of 64, so runs near a sequence's
        // end take the cp.async path (the tensor map would read the next sequence's rows).
        let lens = [1000, 333, 64, 129];
        let offsets = packed_offsets(&lens);
        let cu: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
        let varlen = Varlen::new(device, &cu, &cu).expect("varlen");
        for bhsd in [false, true] {
            let case = Case { batch: 1, seq: offsets[lens.len()], heads: 8, kv_heads: 2, head_dim, bhsd };
            for spec in tma_specs::<T>(device, head_dim) {
                let packed = Packed { varlen: &varlen, offsets: offsets.clone() };
                let o = check_attention::<T>(
                    device,
                    &case,
                    seed ^ 0x7a,
                    Some(spec),
                    PatternArgs::Dense,
                    Some(&packed),
                    &|_, _, i, j| j <= i,
                );
                record(format!("{} varlen {lens:?} {}", spec.kernel_name(), describe::<T>(&case)), &o, failures);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wgmma_tma_dense_matches_reference() {
    let device = device();
    if device.arch() != Arch::Sm90a {
        println!("skipped: the wgmma_tma engine needs sm_90a; the device is {}", device.arch());
        return;
    }
    let mut failures = Vec::new();
    dense_for::<bf16>(&device, &mut failures);
    dense_for::<f16>(&device, &mut failures);
    assert!(failures.is_empty(), "over tolerance {TOLERANCE}: {failures:?}");
}

/// A non-causal part without keys (k and v views of zero rows) on the tensor-map engines: a
/// tensor map cannot view zero rows, so the call runs the tile on the `cp.async` producer and
/// every query row gets output 0 and log-sum-exp -inf.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_non_causal_part_without_keys_gives_zero_and_minus_infinity() {
    let device = device();
    if device.arch() != Arch::Sm90a {
        println!("skipped: the wgmma_tma engine needs sm_90a; the device is {}", device.arch());
        return;
    }
    let stream = device.stream();
    let (q_len, heads, kv_heads, d) = (200, 8, 2, 128);
    let q_host: Vec<bf16> =
        random_normal(q_len * heads * d, test_seed("keyless")).into_iter().map(bf16::from_f32).collect();
    let q = stream.clone_htod(&q_host).expect("q");
    // One row of storage behind the zero-row views (a device allocation cannot be empty).
    let kv = stream.clone_htod(&vec![bf16::from_f32(1.0); kv_heads * d]).expect("kv");
    for spec in tma_specs::<bf16>(&device, d) {
        let mut out = stream.clone_htod(&vec![bf16::NAN; q_len * heads * d]).expect("out");
        let mut lse = stream.clone_htod(&vec![f32::NAN; heads * q_len]).expect("lse");
        minf::attention(
            &device,
            TensorRef::bshd(&q, [1, q_len, heads, d]).expect("q view"),
            TensorRef::bshd(&kv, [1, 0, kv_heads, d]).expect("k view"),
            TensorRef::bshd(&kv, [1, 0, kv_heads, d]).expect("v view"),
            TensorMut::bshd(&mut out, [1, q_len, heads, d]).expect("out view"),
            PatternArgs::Dense,
            AttentionOptions { lse: Some(&mut lse), spec: Some(spec), causal: false, ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", spec.kernel_name()));
        let out: Vec<bf16> = stream.clone_dtoh(&out).expect("out");
        let lse: Vec<f32> = stream.clone_dtoh(&lse).expect("lse");
        assert!(out.iter().all(|x| x.to_f32() == 0.0), "{}: output not 0", spec.kernel_name());
        assert!(lse.iter().all(|&x| x == f32::NEG_INFINITY), "{}: lse not -inf", spec.kernel_name());
    }
}

/// K and V broadcast over a batch of 2 (batch stride 0), which no tensor map can express: the
/// tensor-map engines (the dense default on sm_90a among them) run the call on the `cp.async`
/// producer: no error, and output and log-sum-exp bit for bit those of an explicit `wgmma` launch
/// on the same tile, whose two batch entries (equal queries) equal each other and a launch of the
/// first entry alone over ordinary K/V views.
#[test]
#[ignore = "needs a CUDA GPU"]
fn broadcast_keys_run_on_the_cp_async_producer() {
    let device = device();
    if device.arch() != Arch::Sm90a {
        println!("skipped: the wgmma_tma engine needs sm_90a; the device is {}", device.arch());
        return;
    }
    let stream = device.stream();
    let (batch, seq, heads, kv_heads, d) = (2, 700, 8, 2, 128);
    let seed = test_seed("broadcast_keys");
    let host = |n: usize, salt: u64| -> Vec<bf16> {
        random_normal(n, seed.wrapping_add(salt)).into_iter().map(bf16::from_f32).collect()
    };
    // Both batch entries hold the same queries, so their outputs must match too.
    let mut q_host = host(seq * heads * d, 1);
    q_host.extend_from_within(..);
    let q = stream.clone_htod(&q_host).expect("q");
    let k = stream.clone_htod(&host(seq * kv_heads * d, 2)).expect("k");
    let v = stream.clone_htod(&host(seq * kv_heads * d, 3)).expect("v");
    let broadcast = Layout { shape: [batch, seq, kv_heads, d], strides: [0, kv_heads * d, d, 1] };
    let run = |spec: Option<KernelSpec>| -> (Vec<bf16>, Vec<f32>) {
        let mut out = stream.clone_htod(&vec![bf16::NAN; batch * seq * heads * d]).expect("out");
        let mut lse = stream.clone_htod(&vec![f32::NAN; batch * heads * seq]).expect("lse");
        minf::attention(
            &device,
            TensorRef::bshd(&q, [batch, seq, heads, d]).expect("q view"),
            TensorRef::new(&k, broadcast).expect("broadcast k view"),
            TensorRef::new(&v, broadcast).expect("broadcast v view"),
            TensorMut::bshd(&mut out, [batch, seq, heads, d]).expect("out view"),
            PatternArgs::Dense,
            AttentionOptions { lse: Some(&mut lse), spec, ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        (stream.clone_dtoh(&out).expect("out"), stream.clone_dtoh(&lse).expect("lse"))
    };
    // The first batch entry alone with ordinary K/V views: what each broadcast entry must give.
    let single = |spec: KernelSpec| -> Vec<bf16> {
        let mut out = stream.clone_htod(&vec![bf16::NAN; seq * heads * d]).expect("out");
        minf::attention(
            &device,
            TensorRef::bshd(&q, [1, seq, heads, d]).expect("q view"),
            TensorRef::bshd(&k, [1, seq, kv_heads, d]).expect("k view"),
            TensorRef::bshd(&v, [1, seq, kv_heads, d]).expect("v view"),
            TensorMut::bshd(&mut out, [1, seq, heads, d]).expect("out view"),
            PatternArgs::Dense,
            AttentionOptions { spec: Some(spec), ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        stream.clone_dtoh(&out).expect("out")
    };
    let default = KernelSpec::default_for(Pattern::Dense, DType::Bf16, d as u32, device.arch());
    assert_eq!(default.mainloop, Mainloop::WgmmaTma, "the sm_90a dense default is the tensor-map engine");
    for (given, spec) in [(None, default)].into_iter().chain(tma_specs::<bf16>(&device, d).map(|s| (Some(s), s))) {
        let name = given.map_or("the default".to_string(), |s: KernelSpec| s.kernel_name());
        // The same tile on the cp.async producer, chosen explicitly.
        let (want_out, want_lse) = run(Some(KernelSpec { mainloop: Mainloop::Wgmma, ..spec }));
        let half = want_out.len() / 2;
        assert!(want_out.iter().all(|x| x.to_f32().is_finite()), "{name}: wgmma left unwritten output");
        assert_eq!(want_out[..half], want_out[half..], "{name}: equal queries over broadcast keys differ");
        let unbroadcast = single(KernelSpec { mainloop: Mainloop::Wgmma, ..spec });
        assert!(unbroadcast == want_out[..half], "{name}: broadcast keys give other output than unbroadcast ones");
        let (out, lse) = run(given);
        assert!(out == want_out, "{name}: output differs from wgmma's on the same tile");
        assert!(
            lse.iter().zip(&want_lse).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: log-sum-exp differs from wgmma's on the same tile"
        );
        println!("ok   {name}: broadcast K/V, batch {batch}, bit for bit wgmma's on the same tile");
    }
}
