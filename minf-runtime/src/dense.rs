//! Dense causal attention: the baseline every sparse pattern is measured against and the fallback
//! for short prompts.

use crate::device::Device;
use crate::error::MinfError;
use crate::tensor::{check_layout, AttentionElement, Layout, TensorMut, TensorRef};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use minf_codegen::{KernelSpec, Pattern};

/// Options of an attention call.
#[derive(Debug, Default)]
pub struct AttentionOptions<'a> {
    /// Softmax scale; `None` means `1 / sqrt(head_dim)`.
    pub softmax_scale: Option<f32>,
    /// Optional log-sum-exp output, `[batch, heads, seq]` contiguous f32 (natural log, scaled scores).
    pub lse: Option<&'a mut CudaSlice<f32>>,
    /// Tile configuration; `None` picks the default for the head dimension and device.
    pub spec: Option<KernelSpec>,
}

/// Kernel parameters, passed by value; mirrors `AttentionParams` in `templates/mainloop.cu.tera`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AttentionParams {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    lse: u64,
    /// Element strides (batch, seq, head) of q, k, v, o.
    strides: [[i64; 3]; 4],
    seq_len: i32,
    heads: i32,
    kv_group: i32,
    scale_log2: f32,
    scale: f32,
    _pad: i32,
}

// SAFETY: plain-old-data with the C layout the kernel declares.
unsafe impl DeviceRepr for AttentionParams {}

fn strides(layout: &Layout) -> [i64; 3] {
    [layout.strides[0] as i64, layout.strides[1] as i64, layout.strides[2] as i64]
}

/// Causal attention `out = softmax(q kᵀ · scale, causal) v` for `[batch, seq, heads, head_dim]`
/// tensors (any strides with contiguous rows), with grouped-query attention when `k` and `v` have
/// fewer heads than `q` (no copies). Launches on the device's stream without synchronising.
pub fn dense_attention<T: AttentionElement>(
    device: &Device,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    let head_dim = q.layout.shape[3];
    let spec = match options.spec {
        Some(spec) => spec,
        None => KernelSpec::default_for(Pattern::Dense, T::DTYPE, head_dim as u32, device.arch()),
    };
    attention_with_spec(device, &spec, q, k, v, out, options)
}

/// [`dense_attention`] with an explicit kernel spec (used by `#[sparse_attention]` kernels).
pub fn attention_with_spec<T: AttentionElement>(
    device: &Device,
    spec: &KernelSpec,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    out: TensorMut<'_, T>,
    options: AttentionOptions<'_>,
) -> Result<(), MinfError> {
    check_layout("q", &q.layout, q.data.len())?;
    check_layout("k", &k.layout, k.data.len())?;
    check_layout("v", &v.layout, v.data.len())?;
    check_layout("out", &out.layout, out.data.len())?;
    let [batch, seq, heads, head_dim] = q.layout.shape;
    let kv_heads = k.layout.shape[2];
    if spec.dtype != T::DTYPE {
        return Err(MinfError::Shape(format!("spec dtype {} but tensors are {}", spec.dtype, T::DTYPE)));
    }
    if spec.arch != device.arch() {
        return Err(MinfError::Shape(format!("spec targets {} but the device is {}", spec.arch, device.arch())));
    }
    if head_dim != spec.head_dim as usize {
        return Err(MinfError::Shape(format!("q has head_dim {head_dim} but the spec is for {}", spec.head_dim)));
    }
    if k.layout.shape != v.layout.shape {
        return Err(MinfError::Shape(format!("k shape {:?} != v shape {:?}", k.layout.shape, v.layout.shape)));
    }
    if k.layout.shape != [batch, seq, kv_heads, head_dim] {
        return Err(MinfError::Shape(format!(
            "k shape {:?} does not match q shape {:?} (same batch, seq and head_dim expected)",
            k.layout.shape, q.layout.shape
        )));
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(MinfError::Shape(format!("{heads} query heads is not a multiple of {kv_heads} key/value heads")));
    }
    if out.layout.shape != q.layout.shape {
        return Err(MinfError::Shape(format!("out shape {:?} != q shape {:?}", out.layout.shape, q.layout.shape)));
    }
    let too_big = |n: usize| n > i32::MAX as usize;
    if too_big(seq) || too_big(heads) || batch > 65_535 || heads > 65_535 {
        return Err(MinfError::Shape(format!("batch {batch}, seq {seq}, heads {heads} exceed the launch grid")));
    }
    if let Some(lse) = &options.lse {
        if lse.len() < batch * heads * seq {
            return Err(MinfError::Shape(format!(
                "lse holds {} floats but [batch, heads, seq] = {} are needed",
                lse.len(),
                batch * heads * seq
            )));
        }
    }
    if batch * seq * heads == 0 {
        return Ok(());
    }
    let kernel = device.kernel(spec)?;
    let scale = options.softmax_scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    let stream = device.stream();
    let (q_ptr, _q_sync) = q.data.device_ptr(stream);
    let (k_ptr, _k_sync) = k.data.device_ptr(stream);
    let (v_ptr, _v_sync) = v.data.device_ptr(stream);
    let o_layout = out.layout;
    let (o_ptr, _o_sync) = out.data.device_ptr_mut(stream);
    let (lse_ptr, _lse_sync) = match options.lse {
        Some(lse) => {
            let (ptr, sync) = lse.device_ptr_mut(stream);
            (ptr, Some(sync))
        }
        None => (0, None),
    };
    let params = AttentionParams {
        q: q_ptr,
        k: k_ptr,
        v: v_ptr,
        o: o_ptr,
        lse: lse_ptr,
        strides: [strides(&q.layout), strides(&k.layout), strides(&v.layout), strides(&o_layout)],
        seq_len: seq as i32,
        heads: heads as i32,
        kv_group: (heads / kv_heads) as i32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        scale,
        _pad: 0,
    };
    let config = LaunchConfig {
        grid_dim: (seq.div_ceil(kernel.launch.block_m as usize) as u32, heads as u32, batch as u32),
        block_dim: (kernel.launch.threads, 1, 1),
        shared_mem_bytes: kernel.launch.shared_bytes,
    };
    let mut launch = stream.launch_builder(&kernel.function);
    launch.arg(&params);
    // SAFETY: the parameter block matches the kernel's declaration; every tensor's layout was
    // checked against its buffer, shapes against each other, and the kernel bounds every access by
    // `seq_len` and the head counts.
    unsafe { launch.launch(config) }.map_err(MinfError::driver(format!("launching {}", spec.kernel_name())))?;
    Ok(())
}
