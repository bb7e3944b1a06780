//! minf's runtime: NVRTC JIT compilation, the kernel cache, device tensors and launchers.
//!
//! The path of a kernel: [`minf_codegen::render`] turns a spec into source, [`jit`] compiles it
//! with NVRTC to a cubin for the exact device and keeps it in the disk cache, [`device`] loads it
//! once per CUDA context, and the launchers ([`dense`]) check shapes and launch it.

pub mod dense;
pub mod device;
pub mod error;
pub mod jit;
pub mod reference;
pub mod tensor;

pub use dense::{dense_attention, AttentionOptions};
pub use device::Device;
pub use error::MinfError;
pub use minf_codegen as codegen;
pub use tensor::{AttentionElement, TensorMut, TensorRef};
