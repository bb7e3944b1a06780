//! minf: dynamic sparse attention kernels for long-context prefill, generated and JIT-compiled.
pub use minf_runtime::*;
