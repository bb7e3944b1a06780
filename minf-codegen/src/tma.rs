//! The shared-memory geometry of the `wgmma_tma` engine's tensor-map copies: where each box of a
//! tile lands and why the copy engine's 128-byte swizzle writes exactly the layout the `wgmma`
//! descriptors read.
//!
//! A tile of `rows` rows (Q: `block_m`, K/V: `block_n`) is stored as 64-element (128-byte) column
//! blocks one after the other; inside a block, 16-byte chunk `j` of row `r` sits at chunk position
//! `j ^ (r % 8)` (`tile_offset` in `templates/attention/mainloop/tiles.cu.tera`). A tensor-map box
//! is [`TMA_BOX_ROWS`] rows of one column block ([`TMA_BOX_COLUMNS`] elements); box (`run`,
//! `column_block`) is written at [`box_offset`]. With `CU_TENSOR_MAP_SWIZZLE_128B` the copy engine
//! writes box element row `r`, 16-byte chunk `j` to the unswizzled address `base + 128 r + 16 j`
//! with address bits 4-6 XORed by bits 7-9 ([`swizzle_128b`]); every box starts 1024-aligned (the
//! tiles do, and a box is 8 KiB), so bits 7-9 are `r % 8`, and the two layouts agree.

use crate::abi::{TMA_BOX_COLUMNS, TMA_BOX_ROWS};

/// Bytes per 16-bit element.
const ELEMENT_BYTES: u32 = 2;
/// Bytes per row of a column block (and of a box): the swizzle's span.
const BLOCK_ROW_BYTES: u32 = TMA_BOX_COLUMNS * ELEMENT_BYTES;

/// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled tile of `rows` rows: the layout
/// the `wgmma` descriptors read, as `tile_offset` computes it (in elements) in the template.
pub fn swizzled_tile_offset(row: u32, chunk: u32, rows: u32) -> u32 {
    ELEMENT_BYTES * ((chunk >> 3) * rows * 64 + row * 64 + (((chunk & 7) ^ (row & 7)) << 3))
}

/// Byte offset, from the tile's start, of box `run` (rows `[64 run, 64 run + 64)`) of column block
/// `column_block` of a tile of `rows` rows.
pub fn box_offset(rows: u32, run: u32, column_block: u32) -> u32 {
    column_block * rows * BLOCK_ROW_BYTES + run * TMA_BOX_ROWS * BLOCK_ROW_BYTES
}

/// Where `CU_TENSOR_MAP_SWIZZLE_128B` puts the byte the unswizzled box layout has at shared
/// address `address`: bits 4-6 (the 16-byte chunk within a 128-byte row) XORed with bits 7-9 (the
/// row within a 1024-byte group).
pub fn swizzle_128b(address: u32) -> u32 {
    address ^ (((address >> 7) & 7) << 4)
}

/// Byte offset, from the tile's start, where the copy engine writes 16-byte chunk `chunk` of tile
/// row `row` (a tile of `rows` rows, 1024-aligned), through the box holding it.
pub fn tma_tile_offset(row: u32, chunk: u32, rows: u32) -> u32 {
    let chunks_per_box_row = TMA_BOX_COLUMNS * ELEMENT_BYTES / 16;
    let base = box_offset(rows, row / TMA_BOX_ROWS, chunk / chunks_per_box_row);
    swizzle_128b(base + (row % TMA_BOX_ROWS) * BLOCK_ROW_BYTES + (chunk % chunks_per_box_row) * 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Arch, DType, KernelSpec, Mainloop, Pattern};
    use std::collections::HashMap;

    #[test]
    fn tma_swizzle_writes_the_wgmma_layout() {
        // Every tile shape the engine copies: Q of 64 or 128 rows, K/V of 64 or 128 keys, head_dim
        // 64 or 128 (96 pads its rows to 128).
        for rows in [64u32, 128] {
            for chunks in [8u32, 16] {
                let mut engine_to_tma = HashMap::new();
                for row in 0..rows {
                    for chunk in 0..chunks {
                        let engine = swizzled_tile_offset(row, chunk, rows);
                        let tma = tma_tile_offset(row, chunk, rows);
                        assert_eq!(engine, tma, "rows {rows}, chunks {chunks}: row {row} chunk {chunk}");
                        assert_eq!(engine % 16, 0);
                        assert!(engine < rows * chunks * 16, "inside the tile");
                        // The other way: each byte position holds exactly one (row, chunk).
                        assert_eq!(engine_to_tma.insert(engine, (row, chunk)), None, "offset {engine} twice");
                    }
                }
                assert_eq!(engine_to_tma.len() as u32, rows * chunks);
                for (&offset, &(row, chunk)) in &engine_to_tma {
                    // Undo the swizzle: bits 4-6 XOR bits 7-9 is its own inverse.
                    let unswizzled = swizzle_128b(offset);
                    let block = unswizzled / (rows * BLOCK_ROW_BYTES);
                    let within = unswizzled % (rows * BLOCK_ROW_BYTES);
                    assert_eq!((within / BLOCK_ROW_BYTES, block * 8 + within % BLOCK_ROW_BYTES / 16), (row, chunk));
                }
            }
        }
        // Boxes start on 1024-byte boundaries, so bits 7-9 of a box row's address are its row % 8.
        for rows in [64, 128] {
            for run in 0..rows / TMA_BOX_ROWS {
                for column_block in 0..2 {
                    assert_eq!(box_offset(rows, run, column_block) % 1024, 0);
                }
            }
        }
    }

    #[test]
    fn the_template_layout_is_the_one_tested() {
        let spec = KernelSpec {
            mainloop: Mainloop::WgmmaTma,
            ..KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, Arch::Sm90a)
        };
        let source = render(&spec).expect("renders").source;
        assert!(
            source.contains("return (chunk >> 3) * rows * 64 + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);"),
            "tile_offset changed: update swizzled_tile_offset and the tensor-map swizzle"
        );
        assert!(source.contains("#define TMA_BOX_ROWS 64"));
        assert!(source.contains("#define TMA_BOX_COLUMNS 64"));
    }
}
