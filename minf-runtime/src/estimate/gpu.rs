//! The GPU vertical-slash scores: what [`cpu::vertical_slash_scores`](super::cpu::vertical_slash_scores)
//! computes for one head, for every (batch, query head) at once, in f32 on the device
//! (`templates/vs_scores.cu.tera`, three passes on `device.stream()`, no host sync).

use super::LAST_Q;
// PROVISIONAL: host-assisted stand-ins with the final signatures, replaced by the GPU versions at merge.
pub use super::provisional::{
    estimate_block_sparse_gpu, estimate_vertical_slash_gpu, estimate_vertical_slash_gpu_timed, BlockSparseIndex,
    EstimateWorkspace, VerticalSlashHead,
};
use crate::device::Device;
use crate::error::MinfError;
use crate::tensor::{check_layout, AttentionElement, Layout, TensorRef};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use minf_codegen::spec::HEAD_DIMS;
use minf_codegen::{DType, IndexKernel, IndexKernelSpec};
use std::sync::Arc;

/// Keys each thread of `vs_scores` scores (so each Q value read from shared memory feeds this many
/// keys); mirrors `KEYS` in `templates/vs_scores.cu.tera`.
const KEYS_PER_THREAD: usize = 2;
/// Largest batch and head count (the launch grid's y and z).
pub const MAX_BATCH_OR_HEADS: usize = 65_535;

/// Reusable device scratch of [`vertical_slash_scores_gpu`]: per (batch, head) the softmax
/// partials of every key tile and the combined row statistics. It grows on demand and keeps its
/// memory (used with another device, it reallocates there). The `&mut` borrow and the single
/// stream keep uses in order.
#[derive(Debug, Default)]
pub struct ScoresWorkspace {
    buffer: Option<CudaSlice<f32>>,
}

impl ScoresWorkspace {
    /// An empty workspace; the first call allocates what it needs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of device memory held.
    pub fn device_bytes(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.num_bytes())
    }

    fn reserve(&mut self, device: &Device, len: usize) -> Result<&mut CudaSlice<f32>, MinfError> {
        let stream = device.stream();
        let fits = |b: &CudaSlice<f32>| b.len() >= len && Arc::ptr_eq(b.context(), stream.context());
        match self.buffer.take() {
            Some(buffer) if fits(&buffer) => Ok(self.buffer.insert(buffer)),
            _ => {
                // SAFETY: the kernels write every partial and statistic before reading it.
                let buffer = unsafe { stream.alloc::<f32>(len.max(1)) }
                    .map_err(MinfError::driver(format!("allocating the scores workspace ({len} x f32)")))?;
                Ok(self.buffer.insert(buffer))
            }
        }
    }
}

/// Kernel parameters, passed by value; mirrors `ScoresParams` in `templates/vs_scores.cu.tera`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ScoresParams {
    q: u64,
    k: u64,
    vertical: u64,
    slash: u64,
    partial: u64,
    stats: u64,
    q_stride: [i64; 3],
    k_stride: [i64; 3],
    seq: i32,
    heads: i32,
    group: i32,
    head_dim: i32,
    last_q: i32,
    tiles: i32,
    is_f16: i32,
    scale: f32,
}

// SAFETY: plain-old-data with the C layout the kernel declares.
unsafe impl DeviceRepr for ScoresParams {}

fn shape_error(message: String) -> MinfError {
    MinfError::Shape(message)
}

fn strides(layout: &Layout) -> Result<[i64; 3], MinfError> {
    let mut out = [0i64; 3];
    for (o, &s) in out.iter_mut().zip(&layout.strides[..3]) {
        *o = i64::try_from(s).map_err(|_| shape_error(format!("stride {s} does not fit i64")))?;
    }
    Ok(out)
}

/// The vertical and slash scores of every (batch, query head), as
/// [`cpu::vertical_slash_scores`](super::cpu::vertical_slash_scores) defines them: the last
/// `min(64, N)` query rows score all `N` keys (scale `1/sqrt(head_dim)`, causal), take a softmax
/// per row in f32, and `out_vertical[b, h, j]` receives the mass on key `j`,
/// `out_slash[b, h, s]` the mass on keys `i - s`.
///
/// - `q`: `[batch, N, heads, head_dim]`, `k`: `[batch, N, kv_heads, head_dim]` (any strides with
///   contiguous rows; query head `h` reads key head `h / (heads / kv_heads)`); bf16 or f16;
///   head_dim 64, 96, 128 or 256;
/// - `out_vertical`, `out_slash`: `[batch, heads, N]` f32, fully overwritten.
///
/// Launches on `device.stream()` without synchronising; `workspace` is reused across calls.
pub fn vertical_slash_scores_gpu<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    workspace: &mut ScoresWorkspace,
    out_vertical: &mut CudaSlice<f32>,
    out_slash: &mut CudaSlice<f32>,
) -> Result<(), MinfError> {
    check_layout("q", &q.layout, q.data.len())?;
    check_layout("k", &k.layout, k.data.len())?;
    let [batch, seq, heads, head_dim] = q.layout.shape;
    let kv_heads = k.layout.shape[2];
    if k.layout.shape != [batch, seq, kv_heads, head_dim] {
        return Err(shape_error(format!(
            "vertical-slash scores: k shape {:?} does not match q shape {:?} (same batch, seq and head_dim expected)",
            k.layout.shape, q.layout.shape
        )));
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(shape_error(format!(
            "vertical-slash scores: {heads} query heads is not a multiple of {kv_heads} key/value heads"
        )));
    }
    if !HEAD_DIMS.contains(&u32::try_from(head_dim).unwrap_or(0)) {
        return Err(shape_error(format!("vertical-slash scores: head_dim {head_dim}, allowed {HEAD_DIMS:?}")));
    }
    if batch > MAX_BATCH_OR_HEADS || heads > MAX_BATCH_OR_HEADS {
        return Err(shape_error(format!(
            "vertical-slash scores: batch {batch} and heads {heads} must each be at most {MAX_BATCH_OR_HEADS}"
        )));
    }
    let seq_i32 = i32::try_from(seq)
        .map_err(|_| shape_error(format!("vertical-slash scores: seq {seq} does not fit the kernel's i32 index")))?;
    let out_len = batch * heads * seq;
    for (name, len) in [("out_vertical", out_vertical.len()), ("out_slash", out_slash.len())] {
        if len != out_len {
            return Err(shape_error(format!(
                "vertical-slash scores: {name} holds {len} floats but [batch, heads, seq] = [{batch}, {heads}, {seq}] \
                 needs {out_len}"
            )));
        }
    }
    if out_len == 0 {
        return Ok(());
    }

    let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashScores, arch: device.arch() };
    let name = spec.kernel_name();
    let partials = device.index_kernel(&spec, &format!("{name}_partials"))?;
    let combine = device.index_kernel(&spec, &format!("{name}_combine"))?;
    let accumulate = device.index_kernel(&spec, &format!("{name}_accumulate"))?;
    let threads = partials.launch.threads;
    // Each block scores KEYS_PER_THREAD * threads keys.
    let tiles = seq.div_ceil(KEYS_PER_THREAD * threads as usize);
    let heads_total = batch * heads;
    // Per (batch, head): a (max, sum) pair per tile and row, then one per row.
    let partial_len = heads_total * tiles * LAST_Q * 2;
    let stats_len = heads_total * LAST_Q * 2;
    let buffer = workspace.reserve(device, partial_len + stats_len)?;

    let stream = device.stream();
    stream.memset_zeros(out_slash).map_err(MinfError::driver("zeroing out_slash"))?;
    let (q_ptr, _q_sync) = q.data.device_ptr(stream);
    let (k_ptr, _k_sync) = k.data.device_ptr(stream);
    let (vertical_ptr, _vertical_sync) = out_vertical.device_ptr_mut(stream);
    let (slash_ptr, _slash_sync) = out_slash.device_ptr_mut(stream);
    let (buffer_ptr, _buffer_sync) = buffer.device_ptr_mut(stream);
    let f32_bytes = std::mem::size_of::<f32>() as u64;
    // `seq` fits i32 (checked), so do `tiles`, heads / kv_heads and head_dim.
    let params = ScoresParams {
        q: q_ptr,
        k: k_ptr,
        vertical: vertical_ptr,
        slash: slash_ptr,
        partial: buffer_ptr,
        stats: buffer_ptr + partial_len as u64 * f32_bytes,
        q_stride: strides(&q.layout)?,
        k_stride: strides(&k.layout)?,
        seq: seq_i32,
        heads: heads as i32,
        group: (heads / kv_heads) as i32,
        head_dim: head_dim as i32,
        last_q: LAST_Q.min(seq) as i32,
        tiles: tiles as i32,
        is_f16: i32::from(T::DTYPE == DType::F16),
        scale: (1.0 / (head_dim as f64).sqrt()) as f32,
    };
    let tiled = LaunchConfig {
        grid_dim: (tiles as u32, heads as u32, batch as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let per_head =
        LaunchConfig { grid_dim: (heads as u32, batch as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    for (kernel, config, pass) in
        [(&partials, tiled, "partials"), (&combine, per_head, "combine"), (&accumulate, tiled, "accumulate")]
    {
        let mut launch = stream.launch_builder(&kernel.function);
        launch.arg(&params);
        // SAFETY: the parameter block matches the kernel's declaration; q and k spans were checked
        // against their buffers, the outputs hold batch * heads * seq floats and the workspace
        // partial_len + stats_len; the kernels bound every key by seq and every row by last_q.
        unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching {name}_{pass}")))?;
    }
    Ok(())
}
