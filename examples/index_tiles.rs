//! Counts, on the CPU, the key tiles each index-driven engine computes for a vertical-slash or
//! block-sparse index estimated from the structured inputs (no GPU): where the 128-row blocks' tiles are shared by both
//! 64-row halves, where one half computes alone, which are masked, and what the 64-row blocks visit
//! instead. It runs MInference's estimate (the float64 CPU reference) and the converter's CPU model,
//! then the schedule's CPU model ([`minf_testkit::schedule`]).
//!
//! `index_tiles [--seq 131072] [--heads 4] [--vertical 1000] [--slash 6096] [--block-sparse K]
//! [--seed 1] [--decay L] [--flat-tail]` (`--block-sparse K`: MInference's block-sparse estimate,
//! top-K key blocks per query block, instead of vertical-slash) (`--decay` sets [`InputSpec::decay_logit`](minf_testkit::InputSpec::decay_logit);
//! `--flat-tail` takes [`InputSpec::flat_tail`](minf_testkit::InputSpec::flat_tail), the inputs
//! without the decay).
//!
//! The heads share one KV head (the estimate reads each query head with its KV head).

use minf_testkit::convert::convert_cpu;
use minf_testkit::estimate::{estimate_block_sparse, estimate_vertical_slash};
use minf_testkit::inputs::{InputSpec, StructuredInputs};
use minf_testkit::reference::ReferenceShape;
use minf_testkit::schedule::{
    block_sparse_narrow_tiles, block_sparse_wide_tiles, narrow_gathered_tiles, narrow_tiles, wide_tiles, WideTiles,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).ok_or(format!("{name} needs a value"))?.parse()?),
            None => Ok(default),
        }
    };
    let seq = flag("--seq", 131_072)?;
    let heads = flag("--heads", 4)?;
    let (vertical, slash) = (flag("--vertical", 1000)?, flag("--slash", 6096)?);
    let seed = flag("--seed", 1)? as u64;
    let mut spec = if args.iter().any(|a| a == "--flat-tail") {
        InputSpec::flat_tail(seq, heads, 1, 128, seed)
    } else {
        InputSpec::new(seq, heads, 1, 128, seed)
    };
    if let Some(i) = args.iter().position(|a| a == "--decay") {
        spec.decay_logit = args.get(i + 1).ok_or("--decay needs a value")?.parse()?;
    }
    let decay = spec.decay_logit;
    let started = std::time::Instant::now();
    let qkv = StructuredInputs::generate(&spec)?;
    let shape = ReferenceShape { batch: 1, seq, heads, kv_heads: 1, head_dim: 128 };
    // Per head: what the 128-row schedule computes and the 64-row schedule's tiles, all and
    // gathered.
    let (pattern, tiles): (String, Vec<(WideTiles, usize, usize)>) =
        if let Some(i) = args.iter().position(|a| a == "--block-sparse") {
            let top_k: usize = args.get(i + 1).ok_or("--block-sparse needs a value")?.parse()?;
            let index = estimate_block_sparse(&qkv.q, &qkv.k, shape, top_k)?;
            let tiles =
                (0..heads).map(|h| (block_sparse_wide_tiles(&index, h, seq), block_sparse_narrow_tiles(&index, h), 0));
            (format!("block-sparse top-{top_k}"), tiles.collect())
        } else {
            let estimate = estimate_vertical_slash(&qkv.q, &qkv.k, shape, vertical, slash)?;
            let index = convert_cpu(
                &[seq as i32],
                &estimate.vertical,
                &estimate.slash,
                1,
                heads,
                estimate.nnz_v,
                estimate.nnz_s,
                seq,
            );
            let tiles = (0..heads)
                .map(|h| (wide_tiles(&index, h, seq), narrow_tiles(&index, h), narrow_gathered_tiles(&index, h)));
            (format!("vertical-slash ({vertical}, {slash})"), tiles.collect())
        };
    println!(
        "{pattern} estimated at {seq} tokens, {heads} heads, seed {seed}, decay logit {decay} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "head  density  128-row tiles: both  one-half  (after same / other half)  64-key  masked  columns  \
         shared keys  64-row tiles  (gathered)"
    );
    let rows = seq.div_ceil(64);
    let causal_tiles = rows * (rows + 1) / 2;
    for (h, (wide, square, gathered)) in tiles.into_iter().enumerate() {
        println!(
            "{h:>4}  {:>6.1}%  {:>19}  {:>8}  {:>25}  {:>6}  {:>6}  {:>7}  {:>10.1}%  {:>12}  {:>10}",
            100.0 * square as f64 / causal_tiles as f64,
            wide.both,
            wide.one_half,
            format!("{} / {}", wide.one_half_after_same, wide.one_half_after_other),
            wide.narrow,
            wide.masked,
            wide.columns,
            100.0 * wide.shared_share(),
            square,
            gathered
        );
    }
    Ok(())
}
