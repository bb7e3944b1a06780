//! Times minf's vertical-slash kernel on a converted index saved by `bench/minference_vs.py`
//! (MInference's own converter output), so both kernels run on exactly the same tiles on one
//! card; or, with `--generate SEQ`, on an index of the same kind (by default 30 sink columns +
//! 970 random columns and the 6096 nearest diagonals per head, 32 heads) converted by minf's GPU
//! converter; the counts can be changed, and random far diagonals added, to time the parts apart.
//! Q/K/V are `[batch, heads, seq, dim]` like MInference's, bf16, random.
//!
//! `vs_bench (INDEX.safetensors | --generate SEQ [--sinks 30] [--random-columns 970] [--slashes 6096]
//!           [--far-slashes 0]) [--head-dim 128] [--iters 10] [--tile [block_m,]block_n,warps,stages]
//!           [--mainloop mma_sync|wgmma|wgmma_tma|wgmma_tma_pingpong|wgmma_tma_overlap] [--choose] [--json FILE]`
//!
//! `--choose` runs the heads through a `TileChoice` (a chooser kernel picks 128-row or 64-row
//! blocks per head, then both kernels launch over complementary head maps) and prints the choice.

use half::bf16;
use minf::tensor::Layout;
use minf::{
    vertical_slash_attention, AttentionOptions, Device, PatternArgs, TensorMut, TensorRef, TileChoice,
    VerticalSlashIndexRef,
};
use minf_testkit::reference::random_normal;
use safetensors::SafeTensors;

fn int_tensor(file: &SafeTensors<'_>, name: &str) -> Result<(Vec<i32>, Vec<usize>), Box<dyn std::error::Error>> {
    let view = file.tensor(name)?;
    if view.dtype() != safetensors::Dtype::I32 {
        return Err(format!("{name} is {:?}, expected I32", view.dtype()).into());
    }
    let data = view.data().chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((data, view.shape().to_vec()))
}

/// Tiles minf computes for one 64-row index entry: with 128-key tiles, consecutive 64-key ranges
/// share a tile two at a time (adjacent or not); columns go `block_n` at a time.
fn minf_tiles(offsets: &[i32], columns: usize, block_n: usize) -> usize {
    let ranges = if block_n == 128 { offsets.len().div_ceil(2) } else { offsets.len() };
    ranges + columns.div_ceil(block_n)
}

type HostIndex = (Vec<i32>, Vec<i32>, Vec<i32>, Vec<i32>, [usize; 5]);

fn load_index(path: &str) -> Result<HostIndex, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let file = SafeTensors::deserialize(&bytes)?;
    let (block_count, shape) = int_tensor(&file, "block_count")?;
    let (block_offset, offset_shape) = int_tensor(&file, "block_offset")?;
    let (column_count, _) = int_tensor(&file, "column_count")?;
    let (column_index, column_shape) = int_tensor(&file, "column_index")?;
    let [batch, heads, rows] = shape[..] else { return Err(format!("block_count shape {shape:?}").into()) };
    Ok((block_count, block_offset, column_count, column_index, [batch, heads, rows, offset_shape[3], column_shape[3]]))
}

/// What `--generate` builds per head: sink columns, random columns, nearest diagonals, and random
/// far diagonals (scattered ones, as estimates on real or structured inputs pick).
#[derive(Debug, Clone, Copy)]
struct Generated {
    sinks: usize,
    randoms: usize,
    slashes: usize,
    far_slashes: usize,
}

/// Raw indices like `bench/minference_vs.py`'s, converted on the GPU (timed), downloaded.
fn generate_and_convert(device: &Device, seq: usize, g: Generated) -> Result<HostIndex, Box<dyn std::error::Error>> {
    let heads = 32usize;
    let Generated { sinks, randoms, slashes, far_slashes } = g;
    if sinks + randoms > seq || slashes + far_slashes > seq {
        return Err(format!(
            "--generate {seq}: {sinks} + {randoms} columns or {slashes} + {far_slashes} diagonals do not fit"
        )
        .into());
    }
    let mut rng = minf_testkit::TestRng::new(7);
    let mut vertical = Vec::with_capacity(heads * (sinks + randoms));
    for _ in 0..heads {
        let mut cols: Vec<i32> = (0..sinks as i32).collect();
        while cols.len() < sinks + randoms {
            let c = (sinks + rng.below(seq - sinks)) as i32;
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        vertical.extend(cols);
    }
    let mut slash = Vec::with_capacity(heads * (slashes + far_slashes));
    for _ in 0..heads {
        let mut diagonals: Vec<i32> = (0..slashes as i32).rev().collect();
        while diagonals.len() < slashes + far_slashes {
            let d = (slashes + rng.below(seq - slashes)) as i32;
            if !diagonals.contains(&d) {
                diagonals.push(d);
            }
        }
        slash.extend(diagonals);
    }
    let stream = device.stream();
    let (seqlens, vertical, slash) =
        (stream.clone_htod(&[seq as i32])?, stream.clone_htod(&vertical)?, stream.clone_htod(&slash)?);
    let mut workspace = minf::ConvertWorkspace::new();
    let mut index = minf::convert_vertical_slash(device, &seqlens, &vertical, &slash, 1, heads, seq, &mut workspace)?;
    let ms = minf::timing::median_ms(stream, 0, 5, || {
        minf::convert_vertical_slash_into(device, &seqlens, &vertical, &slash, seq, &mut workspace, &mut index)
    })?;
    println!("minf converter: {ms:.3} ms (median of 5) for {seq} tokens x {heads} heads");
    let shape = index.shape();
    let host = index.to_host()?;
    Ok((
        host.block_count,
        host.block_offset,
        host.column_count,
        host.column_index,
        [shape.batch, shape.heads, shape.rows, shape.nnz_s, shape.nnz_v],
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let head_dim: usize = flag("--head-dim").map_or(Ok(128), |v| v.parse())?;
    let iters: usize = flag("--iters").map_or(Ok(10), |v| v.parse())?;
    let device = Device::new(0)?;
    let (block_count, block_offset, column_count, column_index, [batch, heads, rows, nnz_s, nnz_v]) =
        match flag("--generate") {
            Some(seq) => {
                let count = |name: &str, default: usize| flag(name).map_or(Ok(default), |v| v.parse::<usize>());
                let generated = Generated {
                    sinks: count("--sinks", 30)?,
                    randoms: count("--random-columns", 970)?,
                    slashes: count("--slashes", 6096)?,
                    far_slashes: count("--far-slashes", 0)?,
                };
                println!("generated index per head: {generated:?}");
                generate_and_convert(&device, seq.parse()?, generated)?
            }
            None => {
                let path = args.get(1).ok_or("usage: vs_bench (INDEX.safetensors | --generate SEQ) [...]")?;
                load_index(path)?
            }
        };
    let seq = rows * 64;

    let stream = device.stream().clone();
    let mut spec = minf::codegen::KernelSpec::default_for(
        minf::codegen::Pattern::VerticalSlash,
        minf::codegen::DType::Bf16,
        head_dim as u32,
        device.arch(),
    );
    // `--tile [block_m,]block_n,warps,stages` overrides the default tile.
    if let Some(tile) = flag("--tile") {
        let parts: Vec<u32> = tile.split(',').map(str::parse).collect::<Result<_, _>>()?;
        spec = match parts[..] {
            [block_n, warps, stages] => minf::codegen::KernelSpec { block_n, warps, stages, ..spec },
            [block_m, block_n, warps, stages] => minf::codegen::KernelSpec { block_m, block_n, warps, stages, ..spec },
            _ => return Err("--tile takes [block_m,]block_n,warps,stages".into()),
        };
    }
    if let Some(mainloop) = flag("--mainloop") {
        spec.mainloop = mainloop.parse()?;
    }
    let layout = Layout::bhsd([batch, seq, heads, head_dim]);
    let upload = |seed| {
        stream.clone_htod(&random_normal(layout.span(), seed).into_iter().map(bf16::from_f32).collect::<Vec<_>>())
    };
    let (q, k, v) = (upload(1)?, upload(2)?, upload(3)?);
    let mut out = stream.alloc_zeros::<bf16>(layout.span())?;
    let index_buffers = [&block_count, &block_offset, &column_count, &column_index].map(|host| stream.clone_htod(host));
    let [bc, bo, cc, ci] = index_buffers;
    let (bc, bo, cc, ci) = (bc?, bo?, cc?, ci?);
    let index = VerticalSlashIndexRef {
        block_count: &bc,
        block_offset: &bo,
        column_count: &cc,
        column_index: &ci,
        batch,
        heads,
        rows,
        nnz_s,
        nnz_v,
    };
    let choose = args.iter().any(|a| a == "--choose");
    let all_heads: Vec<usize> = (0..heads).collect();
    let mut choice = TileChoice::new(&device, &all_heads, heads)?;
    let mut run = || {
        let (q, k, v) = (TensorRef::new(&q, layout)?, TensorRef::new(&k, layout)?, TensorRef::new(&v, layout)?);
        let out = TensorMut::new(&mut out, layout)?;
        let options = AttentionOptions { spec: Some(spec), ..Default::default() };
        if choose {
            choice.attention(&device, q, k, v, out, PatternArgs::VerticalSlash(index), options)
        } else {
            vertical_slash_attention(&device, q, k, v, out, index, options)
        }
    };
    let ms = minf::timing::median_ms(&stream, 3, iters, &mut run)?;
    if choose {
        match choice.last_choice(&device)? {
            Some(wide) => println!(
                "tile choice: {} of {heads} heads on 128-row blocks, the others on 64-row blocks",
                wide.iter().filter(|&&w| w).count()
            ),
            None => println!("tile choice: the spec has no 64-row alternative; one launch"),
        }
    }

    // Tiles: MInference's 64x64 count (the index's own density) and what minf actually computes.
    let mut index_tiles = 0usize;
    let mut computed_keys = 0usize;
    for at in 0..batch * heads * rows {
        let n = (block_count[at].max(0) as usize).min(nnz_s);
        let c = (column_count[at].max(0) as usize).min(nnz_v);
        index_tiles += n + c.div_ceil(64);
        computed_keys += minf_tiles(&block_offset[at * nnz_s..][..n], c, spec.block_n as usize) * spec.block_n as usize;
    }
    let causal_tiles = batch * heads * rows * (rows + 1) / 2;
    let tile_flops = 64.0 * 64.0 * head_dim as f64 * 4.0;
    let tflops = index_tiles as f64 * tile_flops / (ms * 1e-3) / 1e12;
    let computed_tflops = computed_keys as f64 / 64.0 * tile_flops / (ms * 1e-3) / 1e12;
    println!(
        "minf vertical-slash ({}): {ms:.3} ms, density {:.2}% of 64x64 tiles, {tflops:.1} TFLOP/s on the index's tiles, \
         {computed_tflops:.1} TFLOP/s on the tiles minf computes ({:.2}% more keys), {} ({})",
        spec.kernel_name(),
        100.0 * index_tiles as f64 / causal_tiles as f64,
        100.0 * (computed_keys as f64 / (index_tiles as f64 * 64.0) - 1.0),
        device.name(),
        device.arch()
    );
    if let Some(json) = flag("--json") {
        std::fs::write(
            json,
            format!(
                "{{\"method\":\"minf_vertical_slash\",\"kernel\":\"{}\",\"kernel_ms\":{ms},\"tiles_64x64\":{index_tiles},\
                 \"causal_tiles_64x64\":{causal_tiles},\"tflops_on_index_tiles\":{tflops},\"tflops_on_computed_tiles\":{computed_tflops},\
                 \"device\":\"{}\"}}\n",
                spec.kernel_name(),
                device.name()
            ),
        )?;
    }
    Ok(())
}
