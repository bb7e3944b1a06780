//! Shared source of truth for minf's generated kernels.
//!
//! The pipeline is `spec → render → compile → cache → launch`; this crate owns the first two steps and
//! the cache key, and has no CUDA dependency so both the proc-macro (`minf-macros`) and the runtime
//! (`minf-runtime`) use the same validation rules.
//!
//! - [`spec`]: what a kernel is ([`KernelSpec`]) and which combinations are valid.
//! - [`render`]: the Tera templates that turn a spec into header-free CUDA C++.
//! - [`key`]: the content-addressed cache key of a rendered kernel.

pub mod key;
pub mod render;
pub mod spec;

pub use key::{CacheKey, CacheKeyInputs};
pub use render::{render, RenderError, RenderedKernel};
pub use spec::{Arch, DType, KernelSpec, LaunchShape, Pattern, SpecError};
