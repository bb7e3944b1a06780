//! Times minf's GPU estimates on structured inputs (RoPE'd queries and keys with sinks, heavy
//! columns and induction repeats; `minf_testkit::StructuredInputs`), bf16:
//!
//! - vertical-slash (every query head, MInference's sizes): scores on tensor cores, per-head top-k,
//!   conversion to the kernel index, each stage timed with CUDA events, and the total;
//! - block-sparse (every query head, top-k key blocks per query block): pooling, block scores and
//!   selection, each stage timed with CUDA events, and the total.
//!
//! Warm-up runs first, then the median of `--reps` runs. With `--q-len N` (below `--seq`), the
//! estimates are those of a chunk: the last `N` queries against all `--seq` keys, as
//! `Prefill::prefill_chunk` runs them.
//!
//! `estimate_bench [--seq 131072] [--q-len SEQ] [--heads 32] [--kv-heads 8] [--head-dim 128]
//!                 [--vertical 1000] [--slash 6096] [--block-top-k 100] [--reps 20] [--seed 1]`

use half::bf16;
use minf::estimate::gpu::{
    estimate_block_sparse_gpu, estimate_block_sparse_gpu_timed, estimate_vertical_slash_gpu,
    estimate_vertical_slash_gpu_timed, EstimateWorkspace, VerticalSlashHead,
};
use minf::timing::median_ms;
use minf::vertical_slash::{IndexShape, VerticalSlashIndex};
use minf::{BlockSparseIndex, Device, TensorRef};
use minf_testkit::inputs::{InputSpec, StructuredInputs};

struct Args {
    seq: usize,
    q_len: Option<usize>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vertical: usize,
    slash: usize,
    block_top_k: usize,
    reps: usize,
    seed: u64,
}

fn parse() -> Result<Args, Box<dyn std::error::Error>> {
    let mut args = Args {
        seq: 131_072,
        q_len: None,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vertical: 1000,
        slash: 6096,
        block_top_k: 100,
        reps: 20,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--seq" => args.seq = number()?,
            "--q-len" => args.q_len = Some(number()?),
            "--heads" => args.heads = number()?,
            "--kv-heads" => args.kv_heads = number()?,
            "--head-dim" => args.head_dim = number()?,
            "--vertical" => args.vertical = number()?,
            "--slash" => args.slash = number()?,
            "--block-top-k" => args.block_top_k = number()?,
            "--reps" => args.reps = number()?.max(1),
            "--seed" => args.seed = number()? as u64,
            _ => return Err(format!("unknown argument {flag}").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let device = match Device::new(0) {
        Ok(device) => device,
        Err(e) => {
            println!("estimate_bench needs a CUDA GPU: {e}");
            return Ok(());
        }
    };
    let Args { seq, heads, kv_heads, head_dim, .. } = args;
    let q_len = args.q_len.unwrap_or(seq);
    if q_len == 0 || q_len > seq {
        return Err(format!("--q-len {q_len}: a chunk has 1 ..= --seq ({seq}) queries").into());
    }
    println!("generating structured inputs: {seq} tokens, {heads}/{kv_heads} heads, d={head_dim}, seed {}", args.seed);
    let qkv = StructuredInputs::generate(&InputSpec::new(seq, heads, kv_heads, head_dim, args.seed))?;
    let stream = device.stream();
    // The chunk's queries: the last q_len of the seq tokens.
    let first_query = (seq - q_len) * heads * head_dim;
    let q = stream.clone_htod(&qkv.q[first_query..].iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())?;
    let k = stream.clone_htod(&qkv.k.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())?;
    drop(qkv);
    let q_view = TensorRef::bshd(&q, [1, q_len, heads, head_dim])?;
    let k_view = TensorRef::bshd(&k, [1, seq, kv_heads, head_dim])?;
    let mut workspace = EstimateWorkspace::new();

    let list: Vec<VerticalSlashHead> =
        (0..heads).map(|head| VerticalSlashHead { head, vertical: args.vertical, slash: args.slash }).collect();
    let (nnz_v, nnz_s) = minf::estimate::clamp_sizes(seq, args.vertical, args.slash);
    let shape = IndexShape { batch: 1, heads, rows: q_len.div_ceil(64), nnz_s, nnz_v };
    let mut index = VerticalSlashIndex::zeros(&device, shape)?;
    for _ in 0..3 {
        estimate_vertical_slash_gpu(&device, q_view, k_view, &list, &mut workspace, &mut index)?;
    }
    let mut stages: Vec<[f32; 3]> = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        stages.push(estimate_vertical_slash_gpu_timed(&device, q_view, k_view, &list, &mut workspace, &mut index)?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let stage = |i: usize| median(stages.iter().map(|s| s[i] as f64).collect());
    let total = median_ms(stream, 1, args.reps, || {
        estimate_vertical_slash_gpu(&device, q_view, k_view, &list, &mut workspace, &mut index)
    })?;
    println!(
        "vertical-slash ({}, {}) {q_len} queries x {seq} keys x {heads} heads (kv {kv_heads}), d={head_dim}, bf16 on {}: scores {:.3} ms, \
         top-k {:.3} ms, conversion {:.3} ms, total {total:.3} ms (medians of {})",
        args.vertical,
        args.slash,
        device.name(),
        stage(0),
        stage(1),
        stage(2),
        args.reps
    );

    let rows = q_len.div_ceil(64);
    let capacity = args.block_top_k.min(seq.div_ceil(64)).max(1);
    let mut blocks = BlockSparseIndex::zeros(&device, 1, heads, rows, capacity)?;
    let all: Vec<usize> = (0..heads).collect();
    let block_ms = median_ms(stream, 2, args.reps, || {
        estimate_block_sparse_gpu(&device, q_view, k_view, &all, args.block_top_k, &mut workspace, &mut blocks)
    })?;
    let mut block_stages: Vec<[f32; 3]> = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        block_stages.push(estimate_block_sparse_gpu_timed(
            &device,
            q_view,
            k_view,
            &all,
            args.block_top_k,
            &mut workspace,
            &mut blocks,
        )?);
    }
    let block_stage = |i: usize| median(block_stages.iter().map(|s| s[i] as f64).collect());
    println!(
        "block-sparse top-{} {q_len} queries x {seq} keys x {heads} heads: pooling {:.3} ms, scores {:.3} ms, selection {:.3} ms, total \
         {block_ms:.3} ms (medians of {}); workspace {} bytes",
        args.block_top_k,
        block_stage(0),
        block_stage(1),
        block_stage(2),
        args.reps,
        workspace.device_bytes()
    );
    Ok(())
}
