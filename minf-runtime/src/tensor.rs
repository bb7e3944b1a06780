//! Device tensor views: a `cudarc` slice plus a logical `[batch, seq, heads, head_dim]` shape and
//! element strides, so `[batch, heads, seq, head_dim]` storage works without a copy.

use crate::error::MinfError;
use crate::foreign::ForeignSlice;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use minf_codegen::DType;
use std::ops::Range;
use std::sync::Arc;

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

/// The tokens `range` of every sequence of a tensor, viewed in place: the tensor's buffer from the
/// range's first token on, with the tensor's strides. What the chunked driver hands each chunk
/// instead of copying its queries and output.
pub(crate) struct TokenRange<T> {
    slice: ForeignSlice<T>,
    layout: Layout,
}

impl<T> TokenRange<T> {
    /// Views tokens `range` of a tensor of `layout` stored at device address `base`, a buffer of
    /// `len` elements of `T`; the range must lie inside the tensor's tokens.
    ///
    /// # Safety
    ///
    /// `base` is the address of `len` elements of `T` in `stream`'s context, which stay allocated
    /// while the view lives and until the work launched on it completes, and which nothing else
    /// accesses outside `stream`'s order meanwhile (the view is given to one launch at a time).
    pub(crate) unsafe fn new(
        stream: &Arc<CudaStream>,
        base: u64,
        len: usize,
        layout: Layout,
        range: Range<usize>,
    ) -> Result<TokenRange<T>, MinfError> {
        let (offset, layout, view_len) = token_range(layout, len, range)?;
        let ptr = base + (offset * std::mem::size_of::<T>()) as u64;
        // SAFETY: `token_range` keeps the view inside the caller's buffer; the rest is the
        // caller's contract above.
        let slice = unsafe { ForeignSlice::new(stream, ptr, view_len) };
        Ok(TokenRange { slice, layout })
    }

    /// The view, read-only.
    pub(crate) fn tensor(&self) -> TensorRef<'_, T> {
        TensorRef { data: self.slice.slice(), layout: self.layout }
    }

    /// The view, writable.
    pub(crate) fn tensor_mut(&mut self) -> TensorMut<'_, T> {
        TensorMut { data: self.slice.slice_mut(), layout: self.layout }
    }
}

/// Where tokens `range` of a tensor of `layout` in a buffer of `len` elements start (an element
/// offset), their layout, and the elements left in the buffer from there on; checks that the range
/// lies inside the tensor's tokens and that the view fits the buffer.
fn token_range(layout: Layout, len: usize, range: Range<usize>) -> Result<(usize, Layout, usize), MinfError> {
    let tokens = layout.shape[1];
    if range.start >= range.end || range.end > tokens {
        return Err(MinfError::Shape(format!("tokens {range:?} of a tensor of {tokens} tokens")));
    }
    let offset = range.start * layout.strides[1];
    let mut shape = layout.shape;
    shape[1] = range.len();
    let view = Layout { shape, strides: layout.strides };
    let view_len = len.saturating_sub(offset);
    view.check("token range", view_len)?;
    Ok((offset, view, view_len))
}

pub(crate) fn check_layout(name: &str, layout: &Layout, len: usize) -> Result<(), MinfError> {
    layout.check(name, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ranges_of_strided_tensors() {
        // [2, 10, 4, 8] stored [batch, heads, seq, head_dim]: token t of sequence b, head h at
        // ((b * 4 + h) * 10 + t) * 8.
        let layout = Layout::bhsd([2, 10, 4, 8]);
        let len = layout.span();
        let (offset, view, view_len) = token_range(layout, len, 3..7).expect("tokens 3..7");
        assert_eq!(offset, 3 * 8);
        assert_eq!(view.shape, [2, 4, 4, 8]);
        assert_eq!(view.strides, layout.strides);
        assert_eq!(view_len, len - 24);
        // The view's last element is the tensor's last element of token 6.
        assert_eq!(offset + view.span() - 1, ((4 + 3) * 10 + 6) * 8 + 7);
        let (offset, view, _) = token_range(Layout::bshd([1, 10, 4, 8]), 320, 9..10).expect("the last token");
        assert_eq!((offset, view.shape[1]), (9 * 32, 1));
    }

    #[test]
    fn token_ranges_outside_the_tensor_or_its_buffer_are_errors() {
        let layout = Layout::bshd([1, 10, 4, 8]);
        for range in [5..5, 0..0, 9..11] {
            let error = token_range(layout, layout.span(), range.clone()).expect_err("outside the tokens");
            assert!(error.to_string().contains("of a tensor of 10 tokens"), "{range:?}: {error}");
        }
        let error = token_range(layout, layout.span() - 1, 2..10).expect_err("a buffer one element short");
        assert!(error.to_string().contains("spans"), "{error}");
    }
}
