//! Shared source of truth for minf's generated kernels.
//!
//! The pipeline is `spec → render → compile → cache → launch`; this crate owns the first two steps and
//! the cache key, and has no CUDA dependency so both the proc-macro (`minf-macros`) and the runtime
//! (`minf-runtime`) use the same validation rules.
//!
//! - [`abi`]: the parameter structs and constants the host and the kernels share, declared once.
//! - [`spec`]: what a kernel is ([`KernelSpec`]) and which combinations are valid.
//! - [`mod@render`]: the Tera templates that turn a spec into header-free CUDA C++.
//! - [`key`]: the content-addressed cache key of a rendered kernel.
//! - [`tma`]: where the `wgmma_tma` engine's tensor-map copies land in shared memory.

pub mod abi;
pub mod key;
pub mod render;
pub mod spec;
pub mod tma;

pub use key::{CacheKey, CacheKeyInputs};
pub use render::{render, render_any, render_index, RenderError, RenderedKernel};
pub use spec::{
    AnyKernel, Arch, DType, EntryPoint, IndexKernel, IndexKernelSpec, KernelSpec, LaunchShape, Mainloop, Pattern,
    SpecError, Tile,
};
