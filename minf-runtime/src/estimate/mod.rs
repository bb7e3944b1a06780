//! Index estimation: per prompt and head, which keys a sparse pattern keeps, by MInference's
//! rules, computed on the device by [`gpu`] (the tests check it against a plain f64 reference
//! outside the library).
//!
//! - **Vertical-slash**: the last [`LAST_Q`] queries score every key; the softmax mass each key
//!   column and each diagonal receives ranks them; the first [`FORCED_COLUMNS`] columns and the
//!   [`FORCED_DIAGONALS`] diagonals nearest the main one always rank first; the top
//!   `v = min(N, max(v, MIN_VERTICAL))` columns and `s = min(N, max(s, MIN_SLASH))` diagonals are
//!   kept ([`clamp_sizes`]).
//! - **Block-sparse**: queries and keys are mean-pooled over 64-token blocks; each query block
//!   keeps its [`BLOCK_SPARSE_TOP_K`] best-scoring causal key blocks.

pub mod gpu;

/// Query rows (the last ones) the vertical-slash estimate reads: `min(LAST_Q, N)`.
pub const LAST_Q: usize = minf_codegen::abi::LAST_Q as usize;
/// Key columns `0 .. FORCED_COLUMNS` are always kept.
pub const FORCED_COLUMNS: usize = minf_codegen::abi::FORCED_COLUMNS as usize;
/// Diagonal offsets `0 .. FORCED_DIAGONALS` rank above every other diagonal.
pub const FORCED_DIAGONALS: usize = minf_codegen::abi::FORCED_DIAGONALS as usize;
/// Fewest columns a vertical-slash head keeps (before clamping to `N`).
pub const MIN_VERTICAL: usize = 30;
/// Fewest diagonals a vertical-slash head keeps (before clamping to `N`).
pub const MIN_SLASH: usize = 50;
/// Key blocks each query block keeps in MInference's block-sparse heads.
pub const BLOCK_SPARSE_TOP_K: usize = 100;
/// Tokens per block of the block-sparse estimate.
pub const BLOCK: usize = minf_codegen::abi::INDEX_BLOCK as usize;

/// MInference's size clamp for a vertical-slash head of `seq` tokens:
/// `(min(seq, max(vertical, 30)), min(seq, max(slash, 50)))`.
pub fn clamp_sizes(seq: usize, vertical: usize, slash: usize) -> (usize, usize) {
    (vertical.max(MIN_VERTICAL).min(seq), slash.max(MIN_SLASH).min(seq))
}
