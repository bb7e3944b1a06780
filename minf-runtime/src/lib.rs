//! minf's runtime: NVRTC JIT compilation, the kernel cache, device tensors and launchers.
//!
//! The path of a kernel: [`minf_codegen::render()`] turns a spec into source, [`jit`] compiles it
//! with NVRTC to a cubin for the exact device and keeps it in the disk cache, [`device`] loads it
//! once per CUDA context, and the launchers ([`mod@attention`]) check shapes and indices and launch it.
//! The [`vertical_slash`] converter builds the sparse index the vertical-slash pattern reads;
//! [`config`] reads MInference's per-head configs; [`estimate`] computes MInference's index
//! estimates on the GPU (vertical-slash and block-sparse, with the [`block_sparse`] index they
//! fill); [`qkv`] holds queries, keys and values on the host and reads and writes them as
//! safetensors; [`prefill`](mod@prefill) runs a whole layer under a per-head config; [`merge`]
//! combines partial attention results over disjoint key sets by their log-sum-exp. Kernels
//! declared with `#[minf::sparse_attention]` implement [`SparseAttentionKernel`] and are listed in
//! the [`registry`]. [`mod@warm`] compiles kernel sets into the disk cache ahead of time and
//! [`doctor`] reports what minf finds on the machine; [`search`] finds per-head configs offline;
//! [`foreign`] views memory and streams of another library (PyTorch) without copies.

pub mod attention;
pub mod block_sparse;
pub mod config;
pub mod device;
pub mod doctor;
pub mod error;
pub mod estimate;
pub mod foreign;
pub mod jit;
pub mod merge;
pub mod prefill;
pub mod qkv;
pub mod registry;
pub mod search;
pub mod tensor;
pub mod tile_choice;
pub mod timing;
mod tma;
pub mod vertical_slash;
pub mod warm;

pub use attention::{
    a_shape_attention, attention, block_sparse_attention, dense_attention, vertical_slash_attention, AShape,
    AttentionOptions, BlockSparseIndexRef, HeadSubset, PatternArgs, Varlen, VerticalSlashIndexRef,
};
pub use block_sparse::{BlockSparseIndex, HostBlockSparseIndex};
pub use config::{ConfigError, HeadConfig, HeadPattern, ModelShape, PatternConfig};
pub use device::Device;
pub use error::MinfError;
pub use estimate::gpu::{
    estimate_block_sparse_gpu, estimate_block_sparse_gpu_timed, estimate_vertical_slash_gpu,
    estimate_vertical_slash_gpu_timed, EstimateWorkspace, VerticalSlashHead,
};
/// The registration machinery `#[sparse_attention]` expands to, so user crates need no direct
/// dependency on `inventory`.
pub use inventory;
pub use merge::merge_attention;
pub use minf_codegen as codegen;
pub use prefill::{HeadGroups, Prefill, PrefillOptions, PrefillTiming, RealisedMask};
pub use qkv::{load_safetensors, save_safetensors, HostQkv};
pub use registry::{
    registered, warm_registered, warm_registered_on, RegisteredKernel, SparseAttentionKernel, WarmReport,
};
pub use tensor::{AttentionElement, TensorMut, TensorRef};
pub use tile_choice::TileChoice;
pub use vertical_slash::{
    convert_vertical_slash, convert_vertical_slash_chunk_into, convert_vertical_slash_into, ChunkLengths,
    ConvertWorkspace, HostVerticalSlashIndex, IndexShape, VerticalSlashIndex,
};
