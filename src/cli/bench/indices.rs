//! The tiles a case computed, on the host: counts for density and TFLOP/s, and the index files
//! (`--save-indices`) that let the peers run on exactly minf's tiles.
//!
//! Each file holds, as int32 safetensors (batch 1):
//! - `block_count [1, H, R]`, `block_offset [1, H, R, NNZ_S]`, `column_count [1, H, R]`,
//!   `column_index [1, H, R, NNZ_V]`: the converted vertical-slash index (MInference's format,
//!   zero after each row's counts), when a head used it;
//! - `kv_num_blocks [1, H, R]`, `kv_indices [1, H, R, CAP]`: the block-sparse lists (64-key
//!   blocks per 64-row block), when a head used them;
//! - `block128_num [1, H, R128]`, `block128_indices [1, H, R128, W]`: for every head, the 128-key
//!   blocks each 128-row block touches (ascending, zero after the count), ready for FlexAttention's
//!   `BlockMask.from_kv_blocks` with `BLOCK_SIZE=128` and a causal `mask_mod`.
//!
//! and metadata `pattern`, `params`, `seq`, `heads`, `kv_heads`, `head_dim`, `head_patterns`
//! (per head: `dense`, `a_shape:N_INIT,N_LOCAL`, `vertical_slash` or `block_sparse`).

use super::cases::Case;
use minf_runtime::prefill::HeadMask;
use minf_runtime::RealisedMask;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rows and keys per tile of the index formats.
const BLOCK: usize = 64;

/// Computed 64x64 tiles of every head and row block (a block's visited keys in whole tiles,
/// causal diagonal tiles counted whole), and the causal tiles, in that order.
pub fn tile_counts(mask: &RealisedMask) -> (u64, u64) {
    let rows = mask.seq.div_ceil(BLOCK);
    let (mut computed, mut causal) = (0u64, 0u64);
    for b in 0..mask.batch {
        for h in 0..mask.heads.len() {
            for r in 0..rows {
                computed += mask.visited_keys(b, h, r).div_ceil(BLOCK) as u64;
                causal += r as u64 + 1;
            }
        }
    }
    (computed, causal)
}

/// The 64-key blocks that 64-row block `r` of head `h` (batch 0) touches, ascending.
pub fn key_blocks(mask: &RealisedMask, h: usize, r: usize) -> Vec<usize> {
    let first_row = r * BLOCK;
    let mut blocks: Vec<usize> = match mask.heads.get(h) {
        Some(HeadMask::Dense) => (0..=r).collect(),
        Some(HeadMask::AShape(shape)) => {
            let sinks = 0..shape.n_init.div_ceil(BLOCK).min(r + 1);
            let window = (first_row + 1).saturating_sub(shape.n_local) / BLOCK..=r;
            sinks.chain(window).collect()
        }
        Some(HeadMask::VerticalSlash) => mask.vertical_slash.as_ref().map_or_else(Vec::new, |index| {
            if r >= index.shape.rows {
                return Vec::new();
            }
            let ranges = index.ranges(0, h, r).iter().flat_map(|&start| {
                let start = usize::try_from(start).unwrap_or(0);
                // The range's first and last key: `(start + 63) / 64` is the last key's block.
                [start / BLOCK, start.div_ceil(BLOCK)]
            });
            let columns = index.columns(0, h, r).iter().map(|&c| usize::try_from(c).unwrap_or(0) / BLOCK);
            ranges.chain(columns).collect()
        }),
        Some(HeadMask::BlockSparse) => mask.block_sparse.as_ref().map_or_else(Vec::new, |index| {
            index.blocks(0, h, r).iter().map(|&b| usize::try_from(b).unwrap_or(0)).collect()
        }),
        None => Vec::new(),
    };
    blocks.retain(|&b| b <= r);
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// Per head and 128-row block, the 128-key blocks touched: `(counts [H * R128], width, indices
/// [H * R128 * width])`.
pub fn blocks_128(mask: &RealisedMask) -> (Vec<i32>, usize, Vec<i32>) {
    let rows = mask.seq.div_ceil(BLOCK);
    let rows_128 = mask.seq.div_ceil(2 * BLOCK);
    let lists: Vec<Vec<i32>> = (0..mask.heads.len())
        .flat_map(|h| {
            (0..rows_128).map(move |big| {
                let mut list: Vec<i32> = (2 * big..(2 * big + 2).min(rows))
                    .flat_map(|r| key_blocks(mask, h, r))
                    .map(|b| (b / 2) as i32)
                    .collect();
                list.sort_unstable();
                list.dedup();
                list
            })
        })
        .collect();
    let width = lists.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let counts = lists.iter().map(|l| l.len() as i32).collect();
    let mut indices = vec![0i32; lists.len() * width];
    for (slot, list) in indices.chunks_exact_mut(width).zip(&lists) {
        slot[..list.len()].copy_from_slice(list);
    }
    (counts, width, indices)
}

fn head_patterns(mask: &RealisedMask) -> String {
    let names: Vec<String> = mask
        .heads
        .iter()
        .map(|h| match h {
            HeadMask::Dense => "dense".to_string(),
            HeadMask::AShape(shape) => format!("a_shape:{},{}", shape.n_init, shape.n_local),
            HeadMask::VerticalSlash => "vertical_slash".to_string(),
            HeadMask::BlockSparse => "block_sparse".to_string(),
        })
        .collect();
    names.join(";")
}

/// The file name of a case's index: `{pattern}_{params}_{seq}.safetensors`, with anything but
/// letters, digits, `.`, `-` and `_` replaced by `_`.
pub fn index_file_name(case: &Case) -> String {
    let raw = format!("{}_{}_{}", case.pattern.kind(), case.pattern.params(), case.seq);
    let clean: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    format!("{clean}.safetensors")
}

/// Writes the index file of `case` (see the [module docs](self)) into `dir`; returns its path.
pub fn save_index(dir: &Path, case: &Case, mask: &RealisedMask) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(index_file_name(case));
    let heads = mask.heads.len();
    let mut tensors: Vec<(&str, Vec<usize>, Vec<i32>)> = Vec::new();
    if let Some(index) = &mask.vertical_slash {
        // The device index leaves the slots past each row's counts unspecified; the file has
        // MInference's zeros there.
        let mut index = index.clone();
        index.zero_padding();
        let s = index.shape;
        tensors.push(("block_count", vec![s.batch, s.heads, s.rows], index.block_count));
        tensors.push(("block_offset", vec![s.batch, s.heads, s.rows, s.nnz_s], index.block_offset));
        tensors.push(("column_count", vec![s.batch, s.heads, s.rows], index.column_count));
        tensors.push(("column_index", vec![s.batch, s.heads, s.rows, s.nnz_v], index.column_index));
    }
    if let Some(index) = &mask.block_sparse {
        tensors.push(("kv_num_blocks", vec![index.batch, index.heads, index.rows], index.kv_num_blocks.clone()));
        tensors.push((
            "kv_indices",
            vec![index.batch, index.heads, index.rows, index.capacity],
            index.kv_indices.clone(),
        ));
    }
    let (counts, width, indices) = blocks_128(mask);
    let rows_128 = mask.seq.div_ceil(2 * BLOCK);
    tensors.push(("block128_num", vec![1, heads, rows_128], counts));
    tensors.push(("block128_indices", vec![1, heads, rows_128, width], indices));
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, data)| data.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::I32, shape.clone(), data).map(|view| (*name, view)).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    let metadata = HashMap::from([
        ("pattern".to_string(), case.pattern.kind().to_string()),
        ("params".to_string(), case.pattern.params()),
        ("seq".to_string(), case.seq.to_string()),
        ("heads".to_string(), case.heads.to_string()),
        ("kv_heads".to_string(), case.kv_heads.to_string()),
        ("head_dim".to_string(), case.head_dim.to_string()),
        ("head_patterns".to_string(), head_patterns(mask)),
    ]);
    let serialized = safetensors::serialize(views, Some(metadata)).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(&path, serialized).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
