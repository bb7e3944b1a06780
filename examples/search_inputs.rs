//! Writes seeded structured Q/K/V (the generator of `minf bench` and `prefill_demo`) as the input
//! directory `minf search` reads: `layer_<n>.safetensors` files of bf16 `q`, `k`, `v`
//! `[1, seq, heads, head_dim]` (metadata `layout = "bshd"`). No GPU needed.
//!
//! ```text
//! cargo run --release --example search_inputs -- --out DIR [--seq 131072] [--heads 32]
//!     [--kv-heads 8] [--head-dim 128] [--layers 32] [--distinct 32] [--seed 1]
//! ```
//!
//! Layer `n` is generated from seed `seed + n` for the first `--distinct` layers; the others are
//! hard links to those (layer `n` links to layer `n % distinct`), so a 32-layer directory at 128K
//! tokens for timing the search needs one generated layer (1.5 GiB) rather than 32 (48 GiB).

use half::bf16;
use minf_testkit::inputs::{InputSpec, StructuredInputs};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    out: Option<PathBuf>,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    layers: usize,
    distinct: Option<usize>,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { out: None, seq: 131_072, heads: 32, kv_heads: 8, head_dim: 128, layers: 32, distinct: None, seed: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a non-negative integer"));
        match flag.as_str() {
            "--out" => args.out = Some(PathBuf::from(value()?)),
            "--seq" => args.seq = number(value()?)?,
            "--heads" => args.heads = number(value()?)?,
            "--kv-heads" => args.kv_heads = number(value()?)?,
            "--head-dim" => args.head_dim = number(value()?)?,
            "--layers" => args.layers = number(value()?)?,
            "--distinct" => args.distinct = Some(number(value()?)?),
            "--seed" => args.seed = number(value()?)? as u64,
            "--help" | "-h" => {
                return Err("usage: search_inputs --out DIR [--seq N] [--heads H] [--kv-heads K] [--head-dim D] \
                            [--layers L] [--distinct N] [--seed S]"
                    .into())
            }
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    if args.layers == 0 || args.distinct == Some(0) {
        return Err("--layers and --distinct must be at least 1".into());
    }
    Ok(args)
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let out = args.out.as_ref().ok_or("--out DIR is required")?;
    std::fs::create_dir_all(out)?;
    let distinct = args.distinct.unwrap_or(args.layers).min(args.layers);
    for layer in 0..args.layers {
        let path = out.join(format!("layer_{layer}.safetensors"));
        if layer >= distinct {
            let source = out.join(format!("layer_{}.safetensors", layer % distinct));
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            std::fs::hard_link(&source, &path)?;
            continue;
        }
        let started = std::time::Instant::now();
        let spec =
            InputSpec::new(args.seq, args.heads, args.kv_heads, args.head_dim, args.seed.wrapping_add(layer as u64));
        let qkv = StructuredInputs::generate(&spec)?;
        let tensors = [("q", &qkv.q, qkv.heads), ("k", &qkv.k, qkv.kv_heads), ("v", &qkv.v, qkv.kv_heads)]
            .map(|(name, data, heads)| (name, vec![1, qkv.seq, heads, qkv.head_dim], bf16_bytes(data)));
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| Ok((*name, TensorView::new(Dtype::BF16, shape.clone(), bytes)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let metadata = HashMap::from([("layout".to_string(), "bshd".to_string())]);
        std::fs::write(&path, safetensors::serialize(views, Some(metadata))?)?;
        eprintln!("{}: generated in {:.1} s", path.display(), started.elapsed().as_secs_f64());
    }
    println!("{} layer files in {} ({distinct} generated)", args.layers, out.display());
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().map_err(Into::into).and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("search_inputs: {error}");
            ExitCode::FAILURE
        }
    }
}
