//! GPU tests of the persistent engines (`wgmma_persistent`, `wgmma_tma_persistent`): with many
//! more work items than the device holds blocks, every block walks several items (skipping the
//! ones past a shorter sequence or a head slot outside the layer), and each output element and
//! log-sum-exp equals, bit for bit, what the engine it is the persistent form of computes: the
//! same tiles in the same order with the same arithmetic. The sparse patterns run through the
//! `*Persistent` variants of `patterns.rs` against the float64 reference, and `sanitize.rs` runs
//! both engines under compute-sanitizer.

use super::patterns::packed_offsets;
use super::{device, test_seed};
use half::bf16;
use minf::codegen::{Arch, DType, KernelSpec, Mainloop, Pattern};
use minf::tensor::Layout;
use minf::{AShape, AttentionOptions, Device, HeadSubset, PatternArgs, TensorMut, TensorRef, Varlen};
use minf_testkit::reference::random_normal;

/// One launch's inputs: q `[batch, q_len, heads, d]`, k and v `[batch, kv_len, kv_heads, d]`,
/// BHSD or BSHD.
struct Inputs {
    q: cudarc::driver::CudaSlice<bf16>,
    k: cudarc::driver::CudaSlice<bf16>,
    v: cudarc::driver::CudaSlice<bf16>,
    q_layout: Layout,
    kv_layout: Layout,
}

impl Inputs {
    fn new(device: &Device, [batch, q_len, kv_len, heads, kv_heads, d]: [usize; 6], bhsd: bool, seed: u64) -> Inputs {
        let layout = |shape| if bhsd { Layout::bhsd(shape) } else { Layout::bshd(shape) };
        let (q_layout, kv_layout) = (layout([batch, q_len, heads, d]), layout([batch, kv_len, kv_heads, d]));
        let upload = |len: usize, seed: u64| {
            let host: Vec<bf16> = random_normal(len, seed).into_iter().map(bf16::from_f32).collect();
            device.stream().clone_htod(&host).expect("upload")
        };
        Inputs {
            q: upload(q_layout.span(), seed),
            k: upload(kv_layout.span(), seed ^ 0x5555),
            v: upload(kv_layout.span(), seed ^ 0xAAAA),
            q_layout,
            kv_layout,
        }
    }

    /// Output bits and log-sum-exp of one launch of `spec` (outputs poisoned with NaN first).
    fn run(
        &self,
        device: &Device,
        spec: KernelSpec,
        args: PatternArgs<'_>,
        varlen: Option<&Varlen>,
        heads: Option<&HeadSubset>,
    ) -> (Vec<u16>, Vec<f32>) {
        self.run_with(device, spec, args, AttentionOptions { varlen, heads, ..Default::default() })
    }

    /// As `run`, with the other options given.
    fn run_with(
        &self,
        device: &Device,
        spec: KernelSpec,
        args: PatternArgs<'_>,
        options: AttentionOptions<'_>,
    ) -> (Vec<u16>, Vec<f32>) {
        let stream = device.stream();
        let [batch, q_len, head_count, _] = self.q_layout.shape;
        let mut out = stream.clone_htod(&vec![bf16::NAN; self.q_layout.span()]).expect("out");
        let mut lse = stream.clone_htod(&vec![f32::NAN; batch * head_count * q_len]).expect("lse");
        minf::attention(
            device,
            TensorRef::new(&self.q, self.q_layout).expect("q"),
            TensorRef::new(&self.k, self.kv_layout).expect("k"),
            TensorRef::new(&self.v, self.kv_layout).expect("v"),
            TensorMut::new(&mut out, self.q_layout).expect("out"),
            args,
            AttentionOptions { lse: Some(&mut lse), spec: Some(spec), ..options },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", spec.kernel_name()));
        let out: Vec<bf16> = stream.clone_dtoh(&out).expect("download out");
        (out.into_iter().map(bf16::to_bits).collect(), stream.clone_dtoh(&lse).expect("download lse"))
    }
}

/// Where the two launches first differ (NaN bit patterns compare equal, so a slot neither writes
/// passes), or None.
fn first_difference(a: &(Vec<u16>, Vec<f32>), b: &(Vec<u16>, Vec<f32>)) -> Option<String> {
    if let Some(i) = a.0.iter().zip(&b.0).position(|(x, y)| x != y) {
        return Some(format!("output element {i}: {:#06x} against {:#06x}", a.0[i], b.0[i]));
    }
    let same = |x: f32, y: f32| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
    a.1.iter().zip(&b.1).position(|(&x, &y)| !same(x, y)).map(|i| format!("lse {i}: {} against {}", a.1[i], b.1[i]))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn persistent_engines_equal_their_one_block_per_item_forms() {
    let device = device();
    if device.arch() != Arch::Sm90a {
        println!("skipped: the persistent engines need sm_90a; the device is {}", device.arch());
        return;
    }
    let seed = test_seed("persistent_engines_equal_their_one_block_per_item_forms");
    let mut failures = Vec::new();
    let mut check =
        |what: String, pattern: Pattern, head_dim: usize, run: &dyn Fn(KernelSpec) -> (Vec<u16>, Vec<f32>)| {
            let base = KernelSpec::default_for(pattern, DType::Bf16, head_dim as u32, device.arch());
            for (persistent, plain) in
                [(Mainloop::WgmmaPersistent, Mainloop::Wgmma), (Mainloop::WgmmaTmaPersistent, Mainloop::WgmmaTma)]
            {
                let tile = |mainloop| KernelSpec { block_m: 128, block_n: 128, warps: 8, stages: 2, mainloop, ..base };
                let (walked, one_per_item) = (run(tile(persistent)), run(tile(plain)));
                let written = walked.0.iter().filter(|&&bits| !bf16::from_bits(bits).is_nan()).count();
                assert!(written > 0, "{persistent} {what}: no output element written");
                match first_difference(&walked, &one_per_item) {
                    None => println!("ok   {persistent} {what}: equal to {plain} ({written} elements written)"),
                    Some(difference) => {
                        println!("FAIL {persistent} {what}: {difference}");
                        failures.push(format!("{persistent} {what}"));
                    }
                }
            }
        };

    // Far more work items than resident blocks: 66 query blocks x 16 heads x 2 sequences.
    for (head_dim, bhsd) in [(128, false), (64, true)] {
        let shape = [2, 8400, 8400, 16, 4, head_dim];
        let inputs = Inputs::new(&device, shape, bhsd, seed ^ head_dim as u64);
        let what = format!("{shape:?} bhsd {bhsd}");
        check(format!("dense {what}"), Pattern::Dense, head_dim, &|spec| {
            inputs.run(&device, spec, PatternArgs::Dense, None, None)
        });
        let a_shape = AShape { n_init: 100, n_local: 1500 };
        check(format!("a_shape (100, 1500) {what}"), Pattern::AShape, head_dim, &|spec| {
            inputs.run(&device, spec, PatternArgs::AShape(a_shape), None, None)
        });
    }

    // A chunk: 3000 queries after a prefix of 9001 keys; and a non-causal part (split-KV) of
    // those queries against 5000 keys.
    let inputs = Inputs::new(&device, [1, 3000, 12_001, 32, 8, 128], false, seed ^ 7);
    check("dense chunk 3000 of 12001".into(), Pattern::Dense, 128, &|spec| {
        inputs.run(&device, spec, PatternArgs::Dense, None, None)
    });
    let inputs = Inputs::new(&device, [1, 3000, 5000, 32, 8, 128], false, seed ^ 9);
    check("dense non-causal 3000 x 5000".into(), Pattern::Dense, 128, &|spec| {
        inputs.run_with(&device, spec, PatternArgs::Dense, AttentionOptions { causal: false, ..Default::default() })
    });

    // A packed batch whose short sequences leave most of their query blocks without work, and a
    // head subset (the other heads' outputs stay untouched).
    let lens = [9000, 65, 1, 4100, 700];
    let offsets = packed_offsets(&lens);
    let cu: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
    let varlen = Varlen::new(&device, &cu, &cu).expect("varlen");
    let total = offsets[lens.len()];
    let inputs = Inputs::new(&device, [1, total, total, 8, 2, 128], false, seed ^ 11);
    check(format!("dense varlen {lens:?}"), Pattern::Dense, 128, &|spec| {
        inputs.run(&device, spec, PatternArgs::Dense, Some(&varlen), None)
    });
    let subset = HeadSubset::new(&device, &[6, 1, 3], 8).expect("head subset");
    check(format!("a_shape varlen {lens:?} heads [6, 1, 3]"), Pattern::AShape, 128, &|spec| {
        inputs.run(&device, spec, PatternArgs::AShape(AShape { n_init: 4, n_local: 300 }), Some(&varlen), Some(&subset))
    });
    assert!(
        failures.is_empty(),
        "persistent launches that differ from their one-block-per-item form (seed {seed}): {failures:?}"
    );
}

/// Small launches on one and on three persistent blocks (`AttentionOptions::persistent_blocks`),
/// so each block walks dozens of items: the carried ring, the Q tile's barriers and the output
/// tile's reuse at sizes compute-sanitizer runs in seconds. Bit for bit equal to the launch of
/// one block per item.
#[test]
#[ignore = "needs a CUDA GPU"]
fn few_persistent_blocks_walk_many_items() {
    let device = device();
    if device.arch() != Arch::Sm90a {
        println!("skipped: the persistent engines need sm_90a; the device is {}", device.arch());
        return;
    }
    let seed = test_seed("few_persistent_blocks_walk_many_items");
    let inputs = Inputs::new(&device, [2, 700, 700, 8, 2, 128], false, seed);
    let mut failures = Vec::new();
    for (pattern, args) in [
        (Pattern::Dense, PatternArgs::Dense),
        (Pattern::AShape, PatternArgs::AShape(AShape { n_init: 4, n_local: 200 })),
    ] {
        let base = KernelSpec::default_for(pattern, DType::Bf16, 128, device.arch());
        for (persistent, plain) in
            [(Mainloop::WgmmaPersistent, Mainloop::Wgmma), (Mainloop::WgmmaTmaPersistent, Mainloop::WgmmaTma)]
        {
            let tile = |mainloop| KernelSpec { block_m: 128, block_n: 128, warps: 8, stages: 2, mainloop, ..base };
            let one_per_item = inputs.run(&device, tile(plain), args, None, None);
            // 6 query blocks x 8 heads x 2 sequences = 96 items.
            for blocks in [1, 3] {
                let options = AttentionOptions { persistent_blocks: Some(blocks), ..Default::default() };
                let walked = inputs.run_with(&device, tile(persistent), args, options);
                match first_difference(&walked, &one_per_item) {
                    None => println!("ok   {persistent} {pattern} on {blocks} block(s): equal to {plain}"),
                    Some(difference) => {
                        println!("FAIL {persistent} {pattern} on {blocks} block(s): {difference}");
                        failures.push(format!("{persistent} {pattern} on {blocks} block(s)"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "persistent launches that differ (seed {seed}): {failures:?}");

    // A grid of no blocks is refused before any launch.
    let mut out = device.stream().clone_htod(&vec![bf16::NAN; inputs.q_layout.span()]).expect("out");
    let error = minf::attention(
        &device,
        TensorRef::new(&inputs.q, inputs.q_layout).expect("q"),
        TensorRef::new(&inputs.k, inputs.kv_layout).expect("k"),
        TensorRef::new(&inputs.v, inputs.kv_layout).expect("v"),
        TensorMut::new(&mut out, inputs.q_layout).expect("out"),
        PatternArgs::Dense,
        AttentionOptions { persistent_blocks: Some(0), ..Default::default() },
    )
    .expect_err("persistent_blocks 0");
    assert!(error.to_string().contains("persistent_blocks must be at least 1"), "{error}");
}
