//! Device tensor views: a `cudarc` slice plus a logical `[batch, seq, heads, head_dim]` shape and
//! element strides, so `[batch, heads, seq, head_dim]` storage works without a copy.

use crate::error::MinfError;
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use minf_codegen::DType;

/// Element types the attention kernels read and write.
pub trait AttentionElement: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// The matching kernel dtype.
    const DTYPE: DType;
    /// Rounds an f32 to this type.
    fn from_f32(x: f32) -> Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
}

impl AttentionElement for half::bf16 {
    const DTYPE: DType = DType::Bf16;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl AttentionElement for half::f16 {
    const DTYPE: DType = DType::F16;
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Logical shape `[batch, seq, heads, head_dim]` with element strides in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `[batch, seq, heads, head_dim]`.
    pub shape: [usize; 4],
    /// Element strides of the four logical dimensions; the last must be 1.
    pub strides: [usize; 4],
}

impl Layout {
    /// Contiguous `[batch, seq, heads, head_dim]` storage.
    pub fn bshd(shape: [usize; 4]) -> Layout {
        let [_, s, h, d] = shape;
        Layout { shape, strides: [s * h * d, h * d, d, 1] }
    }

    /// Contiguous `[batch, heads, seq, head_dim]` storage, seen as `[batch, seq, heads, head_dim]`.
    pub fn bhsd(shape: [usize; 4]) -> Layout {
        let [_, s, h, d] = shape;
        Layout { shape, strides: [h * s * d, d, s * d, 1] }
    }

    /// Number of elements the layout spans (largest offset + 1), 0 for an empty shape.
    pub fn span(&self) -> usize {
        if self.shape.contains(&0) {
            return 0;
        }
        1 + self.shape.iter().zip(self.strides).map(|(n, s)| (n - 1) * s).sum::<usize>()
    }

    fn check(&self, name: &str, len: usize) -> Result<(), MinfError> {
        if self.strides[3] != 1 {
            return Err(MinfError::Shape(format!(
                "{name}: head_dim stride is {}, but it must be 1 (rows of head_dim elements must be contiguous)",
                self.strides[3]
            )));
        }
        if self.strides[..3].iter().any(|s| s % 8 != 0) {
            return Err(MinfError::Shape(format!(
                "{name}: strides {:?} must be multiples of 8 elements (16-byte aligned rows)",
                self.strides
            )));
        }
        let span = self.span();
        if span > len {
            return Err(MinfError::Shape(format!(
                "{name}: shape {:?} with strides {:?} spans {span} elements but the buffer holds {len}",
                self.shape, self.strides
            )));
        }
        Ok(())
    }
}

/// A read-only device tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a, T> {
    /// The device buffer.
    pub data: &'a CudaSlice<T>,
    /// Its logical layout.
    pub layout: Layout,
}

/// A writable device tensor.
#[derive(Debug)]
pub struct TensorMut<'a, T> {
    /// The device buffer.
    pub data: &'a mut CudaSlice<T>,
    /// Its logical layout.
    pub layout: Layout,
}

impl<'a, T> TensorRef<'a, T> {
    /// A view with an explicit layout; checks the layout fits the buffer.
    pub fn new(data: &'a CudaSlice<T>, layout: Layout) -> Result<Self, MinfError> {
        layout.check("tensor", data.len())?;
        Ok(TensorRef { data, layout })
    }

    /// A contiguous `[batch, seq, heads, head_dim]` view.
    pub fn bshd(data: &'a CudaSlice<T>, shape: [usize; 4]) -> Result<Self, MinfError> {
        Self::new(data, Layout::bshd(shape))
    }
}

impl<'a, T> TensorMut<'a, T> {
    /// A view with an explicit layout; checks the layout fits the buffer.
    pub fn new(data: &'a mut CudaSlice<T>, layout: Layout) -> Result<Self, MinfError> {
        layout.check("tensor", data.len())?;
        Ok(TensorMut { data, layout })
    }

    /// A contiguous `[batch, seq, heads, head_dim]` view.
    pub fn bshd(data: &'a mut CudaSlice<T>, shape: [usize; 4]) -> Result<Self, MinfError> {
        Self::new(data, Layout::bshd(shape))
    }
}

pub(crate) fn check_layout(name: &str, layout: &Layout, len: usize) -> Result<(), MinfError> {
    layout.check(name, len)
}
