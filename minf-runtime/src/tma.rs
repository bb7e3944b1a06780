//! Tensor maps for the `wgmma_tma` engine ([`minf_codegen::Mainloop::WgmmaTma`]): the driver
//! encodes one map per input tensor (q, k, v) on the host, and the kernel takes the three by value
//! as a `__grid_constant__` parameter ([`TensorMaps`]).
//!
//! A map views a `[batch, rows, heads, head_dim]` tensor with the call's strides (BSHD, BHSD or
//! any strides whose rows are contiguous and 16-byte aligned) as the 4-d grid
//! (head_dim, rows, heads, batch), innermost first, cut into boxes of [`TMA_BOX_COLUMNS`] elements
//! x [`TMA_BOX_ROWS`] rows of one head of one batch entry, written to shared memory with the
//! 128-byte swizzle the engine's tiles use (`minf_codegen::tma` proves the layouts equal).
//! Elements outside the tensor read as zero; the kernel only copies runs that lie inside a
//! sequence's keys through the maps (a packed sequence's neighbours are inside the tensor), so
//! varlen batches and chunks need no per-sequence maps.

use crate::error::MinfError;
use crate::tensor::Layout;
use cudarc::driver::{sys, DriverError};
use minf_codegen::abi::{TensorMap, TensorMaps, TMA_BOX_COLUMNS, TMA_BOX_ROWS};
use minf_codegen::DType;

/// The driver's limits on a tiled tensor map: global address and strides 16-byte aligned, strides
/// below 2^40 bytes, every dimension at most 2^32 elements.
const ALIGNMENT: u64 = 16;
const MAX_STRIDE: u64 = 1 << 40;
const MAX_DIM: u64 = 1 << 32;

/// What `cuTensorMapEncodeTiled` is given for one tensor, apart from the constant box, swizzle and
/// fill: dimensions innermost first and the byte strides of dimensions 1-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapGeometry {
    /// (head_dim, rows, heads, batch).
    pub dims: [u64; 4],
    /// Byte strides of rows, heads and batch entries.
    pub strides: [u64; 3],
}

/// The geometry of the map of tensor `name` at device address `address` with `layout`, or a
/// clear error where the driver cannot map it. A dimension of extent 1 is never stepped, so its
/// stride is only made acceptable to the driver.
pub(crate) fn map_geometry(name: &str, layout: &Layout, address: u64) -> Result<MapGeometry, MinfError> {
    const ELEMENT_BYTES: u64 = 2;
    let [batch, rows, heads, head_dim] = layout.shape.map(|n| n as u64);
    let unsupported = |why: String| {
        MinfError::Shape(format!(
            "{name}: {why}; a tensor map needs a 16-byte aligned base, extents from 1 to 2^32 and strides below \
             2^40 bytes (such calls run on the wgmma producer)"
        ))
    };
    if !address.is_multiple_of(ALIGNMENT) {
        return Err(unsupported(format!("device address {address:#x} is not 16-byte aligned")));
    }
    let dims = [head_dim, rows, heads, batch];
    if dims.contains(&0) {
        // A call without keys (a non-causal part of nothing) has k and v of zero rows.
        return Err(unsupported(format!("shape {:?} is empty", layout.shape)));
    }
    if let Some(&too_large) = dims.iter().find(|&&n| n > MAX_DIM) {
        return Err(unsupported(format!("dimension {too_large} exceeds 2^32 elements")));
    }
    let mut strides = [0u64; 3];
    for (i, (&extent, &stride)) in
        [rows, heads, batch].iter().zip(&[layout.strides[1], layout.strides[2], layout.strides[0]]).enumerate()
    {
        let bytes = stride as u64 * ELEMENT_BYTES;
        if bytes == 0 && extent > 1 {
            return Err(unsupported(format!(
                "dimension {} of {extent} entries has stride 0 (a broadcast view), which a tensor map cannot express",
                i + 1
            )));
        }
        strides[i] = if extent <= 1 {
            bytes.next_multiple_of(ALIGNMENT).clamp(ALIGNMENT, MAX_STRIDE - ALIGNMENT)
        } else {
            bytes
        };
        if strides[i] % ALIGNMENT != 0 || strides[i] >= MAX_STRIDE {
            return Err(unsupported(format!(
                "stride {bytes} bytes of dimension {} is not a multiple of 16 below 2^40",
                i + 1
            )));
        }
    }
    Ok(MapGeometry { dims, strides })
}

/// The maps of q, k and v (`dtype` elements; each input its name, layout and device address), or
/// `None` when no tensor map can view one of them ([`map_geometry`]'s reasons: zero rows, a
/// broadcast stride of 0, an unaligned base or stride): such a call runs its tile on the
/// `cp.async` producer instead. An error is the driver refusing a geometry it should accept.
pub(crate) fn encode_inputs(dtype: DType, inputs: [(&str, &Layout, u64); 3]) -> Result<Option<TensorMaps>, MinfError> {
    let mut geometries = [MapGeometry { dims: [0; 4], strides: [0; 3] }; 3];
    for (geometry, &(name, layout, address)) in geometries.iter_mut().zip(&inputs) {
        match map_geometry(name, layout, address) {
            Ok(found) => *geometry = found,
            Err(why) => {
                tracing::debug!("{why}");
                return Ok(None);
            }
        }
    }
    let encode_input = |i: usize| encode(inputs[i].0, dtype, &geometries[i], inputs[i].2);
    Ok(Some(TensorMaps { q: encode_input(0)?, k: encode_input(1)?, v: encode_input(2)? }))
}

/// Encodes the map of tensor `name` (`dtype` elements at `address` with `geometry`).
fn encode(name: &str, dtype: DType, geometry: &MapGeometry, address: u64) -> Result<TensorMap, MinfError> {
    let data_type = match dtype {
        DType::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
    };
    let box_dims: [u32; 4] = [TMA_BOX_COLUMNS, TMA_BOX_ROWS, 1, 1];
    let element_strides: [u32; 4] = [1; 4];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every pointer points at a live array of the length the rank (4) implies; the
    // driver writes the 128-byte descriptor into `map` and reads nothing at `address`.
    let result = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            data_type,
            4,
            address as *mut std::ffi::c_void,
            geometry.dims.as_ptr(),
            geometry.strides.as_ptr(),
            box_dims.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    result.result().map_err(|source: DriverError| MinfError::Driver {
        context: format!(
            "encoding the tensor map of {name} (dims {:?}, strides {:?})",
            geometry.dims, geometry.strides
        ),
        source,
    })?;
    Ok(TensorMap { opaque: map.opaque })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_follow_the_layout() {
        let shape = [2, 1000, 8, 128];
        let bshd = map_geometry("k", &Layout::bshd(shape), 0x1000).unwrap();
        assert_eq!(bshd.dims, [128, 1000, 8, 2]);
        assert_eq!(bshd.strides, [8 * 128 * 2, 128 * 2, 1000 * 8 * 128 * 2]);
        let bhsd = map_geometry("k", &Layout::bhsd(shape), 0x1000).unwrap();
        assert_eq!(bhsd.dims, [128, 1000, 8, 2]);
        assert_eq!(bhsd.strides, [128 * 2, 1000 * 128 * 2, 8 * 1000 * 128 * 2]);
        // A single batch entry's stride is never stepped: any value is made acceptable.
        let one = Layout { shape: [1, 64, 2, 64], strides: [0, 128, 64, 1] };
        assert_eq!(map_geometry("q", &one, 0).unwrap().strides, [256, 128, 16]);
    }

    #[test]
    fn unmappable_tensors_are_refused_on_the_host() {
        let layout = Layout::bshd([1, 64, 2, 64]);
        let err = map_geometry("v", &layout, 0x1008).unwrap_err().to_string();
        assert!(err.contains("v: device address 0x1008 is not 16-byte aligned"), "{err}");
        assert!(err.contains("run on the wgmma producer"), "{err}");
        assert!(map_geometry("v", &layout, 0x1010).is_ok());
        let odd = Layout { shape: [2, 64, 2, 64], strides: [64 * 2 * 64 + 4, 128, 64, 1] };
        let err = map_geometry("q", &odd, 0).unwrap_err().to_string();
        assert!(err.contains("dimension 3 is not a multiple of 16"), "{err}");
        // K/V broadcast over the batch through stride 0: refused, not passed to the driver.
        let broadcast = Layout { shape: [2, 64, 2, 64], strides: [0, 128, 64, 1] };
        let err = map_geometry("k", &broadcast, 0).unwrap_err().to_string();
        assert!(err.contains("dimension 3 of 2 entries has stride 0"), "{err}");
        // Zero key rows: no map views them.
        let keyless = Layout::bshd([1, 0, 2, 64]);
        let err = map_geometry("k", &keyless, 0).unwrap_err().to_string();
        assert!(err.contains("shape [1, 0, 2, 64] is empty"), "{err}");
    }
}
