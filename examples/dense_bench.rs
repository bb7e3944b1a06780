//! Times minf's dense causal kernel through the runtime (CUDA events, median after warm-up) and
//! prints TFLOP/s on the causal half of the score matrix; with `--a-shape N_INIT,N_LOCAL`, the
//! A-shape kernel instead (TFLOP/s on the 64x64 tiles it computes, as `minf bench` counts them):
//! rows of a few dozen tiles, where a block's fixed cost shows.
//!
//! `dense_bench [--seqs 16384,65536] [--heads 32] [--kv-heads 32] [--layout bshd|bhsd] [--head-dim 128]
//!              [--iters 20] [--a-shape 128,3968] [--tile block_m,block_n,warps,stages]
//!              [--mainloop mma_sync|wgmma|wgmma_tma|wgmma_tma_pingpong|wgmma_tma_overlap]
//!              [--json FILE]`
//! `--kv-heads` below `--heads` shares each K/V head among `heads / kv_heads` query heads (GQA, as
//! `minf bench` runs Llama-3-8B's 32 on 8); `--layout bhsd` stores the tensors head-major (as the
//! Python peers pass them) instead of token-major.
//! For the baselines on the same card, run `bench/peers.py --methods sdpa_flash,sdpa_cudnn`.

use half::bf16;
use minf::codegen::{DType, KernelSpec, Pattern};
use minf::prefill::HeadMask;
use minf::tensor::Layout;
use minf::{attention, AShape, AttentionOptions, Device, PatternArgs, RealisedMask, TensorMut, TensorRef};
use minf_testkit::reference::random_normal;
use std::time::Instant;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seqs: String = arg(&args, "--seqs", "16384,65536".to_string());
    let heads: usize = arg(&args, "--heads", 32);
    let kv_heads: usize = arg(&args, "--kv-heads", heads);
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(format!("--kv-heads {kv_heads} must divide --heads {heads}").into());
    }
    let layout: String = arg(&args, "--layout", "bshd".to_string());
    let layout_of: fn([usize; 4]) -> Layout = match layout.as_str() {
        "bshd" => Layout::bshd,
        "bhsd" => Layout::bhsd,
        other => return Err(format!("--layout {other}: bshd or bhsd").into()),
    };
    let head_dim: usize = arg(&args, "--head-dim", 128);
    let iters: usize = arg(&args, "--iters", 20);
    let json_path: Option<String> = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1).cloned());
    let a_shape = match args.iter().position(|a| a == "--a-shape").and_then(|i| args.get(i + 1)) {
        Some(sizes) => {
            let parts: Vec<usize> = sizes.split(',').map(str::parse).collect::<Result<_, _>>()?;
            let [n_init, n_local] = parts[..] else {
                return Err("--a-shape takes n_init,n_local".into());
            };
            Some(AShape { n_init, n_local })
        }
        None => None,
    };
    let (pattern, args_of) = match a_shape {
        Some(shape) => (Pattern::AShape, PatternArgs::AShape(shape)),
        None => (Pattern::Dense, PatternArgs::Dense),
    };

    let device = Device::new(0)?;
    let stream = device.stream().clone();
    println!("device: {} ({})", device.name(), device.arch());
    let mut spec = KernelSpec::default_for(pattern, DType::Bf16, head_dim as u32, device.arch());
    if let Some(tile) = args.iter().position(|a| a == "--tile").and_then(|i| args.get(i + 1)) {
        let parts: Vec<u32> = tile.split(',').map(str::parse).collect::<Result<_, _>>()?;
        let [block_m, block_n, warps, stages] = parts[..] else {
            return Err("--tile takes block_m,block_n,warps,stages".into());
        };
        spec = KernelSpec { block_m, block_n, warps, stages, ..spec };
    }
    if let Some(mainloop) = args.iter().position(|a| a == "--mainloop").and_then(|i| args.get(i + 1)) {
        spec.mainloop = mainloop.parse()?;
    }
    println!("kernel: {} ({heads} query heads on {kv_heads} K/V heads, {layout})", spec.kernel_name());
    let mut records = Vec::new();
    for seq in seqs.split(',').map(str::parse::<usize>) {
        let seq = seq?;
        let (q_shape, kv_shape) = ([1, seq, heads, head_dim], [1, seq, kv_heads, head_dim]);
        let (n, kv_n) = (seq * heads * head_dim, seq * kv_heads * head_dim);
        let upload = |len: usize, seed: u64| {
            stream.clone_htod(&random_normal(len, seed).into_iter().map(bf16::from_f32).collect::<Vec<_>>())
        };
        let (q, k, v) = (upload(n, 1)?, upload(kv_n, 2)?, upload(kv_n, 3)?);
        let mut out = stream.alloc_zeros::<bf16>(n)?;
        let mut run = || -> Result<(), minf::MinfError> {
            attention(
                &device,
                TensorRef::new(&q, layout_of(q_shape))?,
                TensorRef::new(&k, layout_of(kv_shape))?,
                TensorRef::new(&v, layout_of(kv_shape))?,
                TensorMut::new(&mut out, layout_of(q_shape))?,
                args_of,
                AttentionOptions { spec: Some(spec), ..Default::default() },
            )
        };
        let first = Instant::now();
        run()?;
        stream.synchronize()?;
        let first_call_s = first.elapsed().as_secs_f64();
        let ms = minf::timing::median_ms(&stream, 3, iters, &mut run)?;
        let flops = match a_shape {
            Some(shape) => 4.0 * 64.0 * 64.0 * head_dim as f64 * heads as f64 * a_shape_tiles(seq, shape) as f64,
            None => 4.0 * (seq as f64) * (seq as f64) / 2.0 * head_dim as f64 * heads as f64,
        };
        let tflops = flops / (ms * 1e-3) / 1e12;
        println!(
            "seq={seq:6} minf (rust runtime) {ms:8.3} ms {tflops:6.1} TFLOP/s  (first call incl. JIT/cache load {first_call_s:.2} s)"
        );
        records.push(format!(
            "{{\"method\":\"minf\",\"pattern\":\"{}\",\"seq\":{seq},\"heads\":{heads},\"kv_heads\":{kv_heads},\"layout\":\"{layout}\",\"head_dim\":{head_dim},\"ms\":{ms},\"tflops\":{tflops},\"first_call_s\":{first_call_s},\"device\":\"{}\"}}",
            pattern,
            device.name()
        ));
    }
    if let Some(path) = json_path {
        std::fs::write(path, format!("[{}]\n", records.join(",\n")))?;
    }
    Ok(())
}

/// The 64x64 tiles an A-shape head computes over `seq` tokens, counted as `minf bench` counts
/// them: each 64-row block's visited keys (`RealisedMask::visited_keys`) in whole tiles.
fn a_shape_tiles(seq: usize, shape: AShape) -> usize {
    let mask = RealisedMask {
        batch: 1,
        seq,
        q_offset: 0,
        heads: vec![HeadMask::AShape(shape)],
        vertical_slash: None,
        block_sparse: None,
    };
    (0..seq.div_ceil(64)).map(|r| mask.visited_keys(0, 0, r).div_ceil(64)).sum()
}
