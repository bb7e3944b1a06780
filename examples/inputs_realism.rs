//! How realistic the structured inputs are, on the CPU (no GPU): for each length, the share of
//! the last rows' attention mass their top 4096 keys hold (MInference reports ~96% at 128K for
//! real models), and for MInference's vertical-slash estimate at three of the shipped configs'
//! sizes, the share of the causal 64x64 tiles its converted index covers and the attention mass
//! it keeps (recall) on the last rows and on rows in the middle. It runs the float64 CPU
//! reference of the estimate and the converter's CPU model.
//!
//! `inputs_realism [--seqs 32768,131072,262144,1048576] [--heads 1] [--seed 1] [--flat-tail]`
//!
//! `--flat-tail` measures [`InputSpec::flat_tail`](minf_testkit::InputSpec::flat_tail), the
//! inputs without the long-range decay. One KV head; every query head reads it.

use minf::HostQkv;
use minf_testkit::convert::convert_cpu;
use minf_testkit::estimate::estimate_vertical_slash;
use minf_testkit::inputs::{InputSpec, StructuredInputs};
use minf_testkit::reference::{recall, ReferenceShape};

/// The vertical-slash sizes measured: the shipped Llama-3-8B-262K config's most common ones.
const SIZES: [(usize, usize); 3] = [(1000, 6096), (100, 800), (3500, 100)];

/// Mean and least share of the mass the top `top` keys of each listed row hold (head `h`).
fn top_share(qkv: &HostQkv, h: usize, rows: &[usize], top: usize) -> (f64, f64) {
    let d = qkv.head_dim;
    let scale = 1.0 / (d as f64).sqrt();
    let shares: Vec<f64> = rows
        .iter()
        .map(|&i| {
            let q = &qkv.q[(i * qkv.heads + h) * d..][..d];
            let mut logits: Vec<f64> = (0..=i)
                .map(|j| {
                    let k = &qkv.k[j * qkv.kv_heads * d..][..d];
                    q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                })
                .collect();
            let max = logits.iter().copied().fold(f64::MIN, f64::max);
            logits.iter_mut().for_each(|x| *x = (*x - max).exp());
            let total: f64 = logits.iter().sum();
            logits.sort_by(|a, b| b.total_cmp(a));
            logits.iter().take(top).sum::<f64>() / total
        })
        .collect();
    (shares.iter().sum::<f64>() / shares.len() as f64, shares.iter().copied().fold(1.0, f64::min))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let seqs: Vec<usize> = match value("--seqs") {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![32768, 131072, 262144, 1048576],
    };
    let heads: usize = value("--heads").map(|v| v.parse()).transpose()?.unwrap_or(1);
    let seed: u64 = value("--seed").map(|v| v.parse()).transpose()?.unwrap_or(1);
    let flat = args.iter().any(|a| a == "--flat-tail");
    let decay_base: Option<f64> = value("--decay-base").map(|v| v.parse()).transpose()?;
    println!(
        "{} inputs, {heads} head(s), seed {seed}",
        if flat { "flat-tail (InputSpec::flat_tail)" } else { "default (InputSpec::new)" }
    );
    println!("| tokens | top-4096 share of the last rows (least) | (v, s) | index density | recall, last rows (worst) | recall, middle rows (worst) |");
    println!("|---|---|---|---|---|---|");
    for &seq in &seqs {
        let mut spec = if flat {
            InputSpec::flat_tail(seq, heads, 1, 128, seed)
        } else {
            InputSpec::new(seq, heads, 1, 128, seed)
        };
        if let Some(base) = decay_base {
            spec.decay_logit = base + InputSpec::length_boost(seq);
        }
        let qkv = StructuredInputs::generate(&spec)?;
        let shape = ReferenceShape { batch: 1, seq, heads, kv_heads: 1, head_dim: 128 };
        let last: Vec<usize> = (seq - 64..seq).step_by(9).collect();
        let middle: Vec<usize> = (seq / 2..seq / 2 + 64).step_by(9).collect();
        let (mut top_mean, mut top_least) = (0.0, 1.0f64);
        for h in 0..heads {
            let (mean, least) = top_share(&qkv, h, &last, 4096);
            top_mean += mean / heads as f64;
            top_least = top_least.min(least);
        }
        for (v, s) in SIZES {
            let est = estimate_vertical_slash(&qkv.q, &qkv.k, shape, v, s)?;
            let index = convert_cpu(&[seq as i32], &est.vertical, &est.slash, 1, heads, est.nnz_v, est.nnz_s, seq);
            let rows = seq.div_ceil(64);
            let causal = rows * (rows + 1) / 2 * heads;
            let tiles: usize = (0..heads)
                .flat_map(|h| (0..rows).map(move |r| (h, r)))
                .map(|(h, r)| index.ranges(0, h, r).len() + index.columns(0, h, r).len().div_ceil(64))
                .sum();
            let kept = |rows: &[usize]| recall(&qkv.q, &qkv.k, shape, |b, h, i, j| est.contains(b, h, i, j), rows);
            let (at_end, at_middle) = (kept(&last)?, kept(&middle)?);
            println!(
                "| {seq} | {top_mean:.3} ({top_least:.3}) | ({v}, {s}) | {:.1}% | {:.3} ({:.3}) | {:.3} ({:.3}) |",
                100.0 * tiles as f64 / causal as f64,
                at_end.mean,
                at_end.worst,
                at_middle.mean,
                at_middle.worst
            );
        }
    }
    Ok(())
}
