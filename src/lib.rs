//! minf: dynamic sparse attention kernels for long-context prefill, generated and JIT-compiled.
/// Declares a sparse-attention kernel on a struct; see [`SparseAttentionKernel`] and `docs/macro.md`.
pub use minf_macros::sparse_attention;
pub use minf_runtime::*;
