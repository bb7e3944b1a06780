//! The log-sum-exp merge of partial attention results.
//!
//! Attention over a key set split into disjoint parts (split-KV, the prefix and the diagonal of a
//! chunked prefill, context parallelism) is computed part by part, each with its log-sum-exp
//! ([`AttentionOptions::lse`](crate::AttentionOptions::lse)); [`merge_attention`] combines two
//! parts exactly: with `m = max(lse_a, lse_b)`, `w_a = exp(lse_a - m)`, `w_b = exp(lse_b - m)`,
//! `out = (w_a out_a + w_b out_b) / (w_a + w_b)` and `lse = m + ln(w_a + w_b)`. A part that saw no
//! key (lse -inf) has weight 0; a row whose parts both saw none gets output 0 and lse -inf. Merging
//! is associative, so any number of parts merge pairwise.

use crate::device::{Device, KernelArgs};
use crate::error::MinfError;
use crate::tensor::{check_layout, AttentionElement, Layout, TensorMut, TensorRef};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};
use minf_codegen::abi::{MergeParams, INDEX_THREADS};
use minf_codegen::{IndexKernel, IndexKernelSpec};

/// Most blocks of one merge launch; the kernel strides over the rest.
const MAX_BLOCKS: usize = 1 << 20;

/// Merges part b into part a in place: `out_a` and `lse_a` become the attention over the union of
/// the two parts' key sets. Outputs are `[batch, rows, heads, head_dim]` (any strides with
/// contiguous rows, as attention takes them), both of one shape; LSEs are f32
/// `[batch, heads, rows]`. Packed (varlen) results, `[1, total_rows, heads, head_dim]` with LSE
/// `[heads, total_rows]`, are the case `batch = 1`. Launches on the device's stream without
/// synchronising.
pub fn merge_attention<T: AttentionElement>(
    device: &Device,
    out_a: TensorMut<'_, T>,
    lse_a: &mut CudaSlice<f32>,
    out_b: TensorRef<'_, T>,
    lse_b: &CudaSlice<f32>,
) -> Result<(), MinfError> {
    let [batch, rows, heads, head_dim] =
        check_merge(&out_a.layout, out_a.data.len(), lse_a.len(), &out_b.layout, out_b.data.len(), lse_b.len())?;
    if batch * rows * heads * head_dim == 0 {
        return Ok(());
    }
    let spec = IndexKernelSpec { kernel: IndexKernel::LseMerge, arch: device.arch() };
    let kernel = device.index_kernel(&spec, &spec.entry_name(&format!("_{}", T::DTYPE)))?;
    let stream = device.stream();
    let strides = |layout: &Layout| [layout.strides[0] as i64, layout.strides[1] as i64, layout.strides[2] as i64];
    let (a_strides, b_strides) = (strides(&out_a.layout), strides(&out_b.layout));
    let (out_a_ptr, _out_a_sync) = out_a.data.device_ptr_mut(stream);
    let (lse_a_ptr, _lse_a_sync) = lse_a.device_ptr_mut(stream);
    let (out_b_ptr, _out_b_sync) = out_b.data.device_ptr(stream);
    let (lse_b_ptr, _lse_b_sync) = lse_b.device_ptr(stream);
    // check_merge bounded every dimension by i32.
    let params = KernelArgs(MergeParams {
        out_a: out_a_ptr.into(),
        lse_a: lse_a_ptr.into(),
        out_b: out_b_ptr.into(),
        lse_b: lse_b_ptr.into(),
        a_strides,
        b_strides,
        batch: batch as i32,
        rows: rows as i32,
        heads: heads as i32,
        head_dim: head_dim as i32,
    });
    let warps_per_block = (INDEX_THREADS / 32) as usize;
    let blocks = (batch * rows * heads).div_ceil(warps_per_block).min(MAX_BLOCKS);
    let config = kernel.config((blocks as u32, 1, 1));
    let mut launch = stream.launch_builder(&kernel.function);
    launch.arg(&params);
    // SAFETY: the parameter block matches the kernel's declaration; both outputs' layouts were
    // checked against their buffers (16-byte aligned rows of head_dim, a multiple of 8, elements)
    // and both LSEs hold [batch, heads, rows] floats; the kernel touches nothing else.
    unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching {}", spec.kernel_name())))?;
    Ok(())
}

/// The host checks of a merge: layouts within their buffers, equal shapes, a head dimension of
/// whole 16-byte chunks, LSEs of `[batch, heads, rows]`, dimensions within the kernel's 32-bit
/// counters. Returns the shape.
fn check_merge(
    a: &Layout,
    a_len: usize,
    lse_a_len: usize,
    b: &Layout,
    b_len: usize,
    lse_b_len: usize,
) -> Result<[usize; 4], MinfError> {
    check_layout("merge out_a", a, a_len)?;
    check_layout("merge out_b", b, b_len)?;
    if a.shape != b.shape {
        return Err(MinfError::Shape(format!(
            "merge: out_a shape {:?} != out_b shape {:?}; both parts cover the same queries",
            a.shape, b.shape
        )));
    }
    let [batch, rows, heads, head_dim] = a.shape;
    if head_dim % 8 != 0 {
        return Err(MinfError::Shape(format!("merge: head_dim {head_dim} must be a multiple of 8")));
    }
    for (what, n) in [("batch", batch), ("rows", rows), ("heads", heads), ("head_dim", head_dim)] {
        if i32::try_from(n).is_err() {
            return Err(MinfError::Shape(format!("merge: {what} = {n} does not fit the kernel's 32-bit counters")));
        }
    }
    let needed = batch * heads * rows;
    for (name, len) in [("lse_a", lse_a_len), ("lse_b", lse_b_len)] {
        if len < needed {
            return Err(MinfError::Shape(format!(
                "merge: {name} holds {len} floats but [batch, heads, rows] = {needed} are needed"
            )));
        }
    }
    Ok(a.shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_checked_on_the_host() {
        let layout = Layout::bshd([2, 10, 4, 64]);
        let span = layout.span();
        assert_eq!(check_merge(&layout, span, 80, &layout, span, 80).unwrap(), [2, 10, 4, 64]);
        let message = |result: Result<[usize; 4], MinfError>| result.unwrap_err().to_string();
        let other = Layout::bshd([2, 11, 4, 64]);
        assert!(message(check_merge(&layout, span, 80, &other, other.span(), 88)).contains("out_a shape"));
        assert!(message(check_merge(&layout, span, 79, &layout, span, 80))
            .contains("lse_a holds 79 floats but [batch, heads, rows] = 80 are needed"));
        assert!(message(check_merge(&layout, span, 80, &layout, span, 8)).contains("lse_b holds 8"));
        assert!(message(check_merge(&layout, span - 1, 80, &layout, span, 80)).contains("merge out_a"));
        let odd = Layout::bshd([1, 4, 1, 12]);
        assert!(message(check_merge(&odd, 1000, 4, &odd, 1000, 4)).contains("strides"));
    }
}
