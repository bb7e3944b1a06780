//! Device memory and streams owned by another library (PyTorch, through the Python package):
//! [`ForeignSlice`] views an allocation the other library owns as a [`CudaSlice`] without taking
//! ownership, and [`stream_device`] gives a [`Device`] that launches on a stream the other library
//! owns. minf's launches then sit in that stream's order, between the library's own work, with no
//! host synchronisation and no events.
//!
//! Both are for the device's primary context, the one the CUDA runtime (and so PyTorch) uses:
//! [`Device::new`] retains it, so pointers and streams of the runtime are valid here.

use crate::device::Device;
use crate::error::MinfError;
use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaSlice, CudaStream};
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};

/// A device allocation owned by someone else, seen as a [`CudaSlice`] so the launchers take it.
/// Dropping the view never frees the memory.
#[derive(Debug)]
pub struct ForeignSlice<T> {
    // Taken by `Drop`, which gives the pointer up without freeing it.
    slice: ManuallyDrop<CudaSlice<T>>,
}

impl<T> ForeignSlice<T> {
    /// Views `len` elements of `T` at device address `ptr`, to be used on `stream`.
    ///
    /// # Safety
    ///
    /// - `ptr` is the address of at least `len` elements of `T` in `stream`'s context;
    /// - the memory stays allocated while the view exists and until the work launched on it
    ///   completes. Work launched on `stream` is ordered before anything the owner later does on
    ///   that stream, so an owner that frees and reuses memory in stream order (PyTorch's caching
    ///   allocator, for a tensor used on the stream it was allocated on) meets this; memory used
    ///   on another stream needs the owner's own guard (`Tensor.record_stream` in PyTorch);
    /// - nothing else writes the memory while launched work reads it, nor reads it while launched
    ///   work writes it, except in the stream's order.
    pub unsafe fn new(stream: &Arc<CudaStream>, ptr: u64, len: usize) -> ForeignSlice<T> {
        // SAFETY: the caller's contract above; `Drop` leaks the slice, so cudarc never frees `ptr`.
        let slice = unsafe { stream.upgrade_device_ptr::<T>(ptr, len) };
        ForeignSlice { slice: ManuallyDrop::new(slice) }
    }

    /// The view, for [`crate::TensorRef`] and index references.
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.slice
    }

    /// The view, writable, for [`crate::TensorMut`] and output buffers.
    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}

impl<T> Drop for ForeignSlice<T> {
    fn drop(&mut self) {
        // SAFETY: `slice` is taken once, here, and never used again.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        // Gives up ownership without freeing: the memory belongs to the other library.
        slice.leak();
    }
}

/// Devices by (ordinal, stream handle); each lives for the rest of the process.
static DEVICES: Mutex<Vec<(usize, usize, &'static Device)>> = Mutex::new(Vec::new());

/// Device `ordinal` launching on `cu_stream`, a stream of the device's primary context owned by
/// another library (null: the context's default stream). The first call for an ordinal opens the
/// device ([`Device::new`], the kernel cache from the environment); every stream of an ordinal
/// shares its loaded kernels ([`Device::with_stream`]). One [`Device`] is kept per (ordinal,
/// stream) for the rest of the process, so the result can be borrowed for as long as needed (a
/// [`crate::Prefill`] holds one).
///
/// # Safety
///
/// `cu_stream` is null, the per-thread default stream, or a valid stream of device `ordinal`'s
/// primary context that its owner keeps alive while work is launched through the returned device
/// (PyTorch's pooled streams are never destroyed). Work launched through it is ordered with the
/// owner's by the stream alone.
pub unsafe fn stream_device(ordinal: usize, cu_stream: CUstream) -> Result<&'static Device, MinfError> {
    let poisoned = || MinfError::Shape("the device table is poisoned by a panic in another thread".into());
    let mut devices = DEVICES.lock().map_err(|_| poisoned())?;
    let key = cu_stream as usize;
    if let Some(&(_, _, device)) = devices.iter().find(|(o, s, _)| (*o, *s) == (ordinal, key)) {
        return Ok(device);
    }
    let base = match devices.iter().find(|(o, s, _)| (*o, *s) == (ordinal, 0)) {
        Some(&(_, _, device)) => device,
        None => {
            let device: &'static Device = Box::leak(Box::new(Device::new(ordinal)?));
            devices.push((ordinal, 0, device));
            device
        }
    };
    if key == 0 {
        return Ok(base);
    }
    // SAFETY: the caller guarantees the stream belongs to this device's primary context (the one
    // `Device::new` retains) and outlives the work launched on it; the wrapper never destroys it.
    let stream = unsafe { base.context().wrap_borrowed_stream(cu_stream) };
    let device: &'static Device = Box::leak(Box::new(base.with_stream(stream)?));
    devices.push((ordinal, key, device));
    Ok(device)
}

/// Runs `f` and then makes the calling thread's CUDA context what it was before: for work that may
/// bind another device's context (cudarc binds a buffer's context to the thread to free it) outside
/// the caller's device guard, so the other library's current device does not change under it. Call
/// it only once the driver is loaded (a [`Device`] was opened); a context that cannot be read or
/// restored is logged and left as it is.
pub fn keeping_current_context<R>(f: impl FnOnce() -> R) -> R {
    let saved = cudarc::driver::result::ctx::get_current();
    let result = f();
    match saved {
        Ok(Some(context)) => {
            // SAFETY: `context` was current on this thread a moment ago and is a primary context
            // retained by the device that owns it (and by the other library), so it is still alive.
            if let Err(error) = unsafe { cudarc::driver::result::ctx::set_current(context) } {
                tracing::warn!("could not restore the thread's CUDA context: {error}");
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!("could not read the thread's CUDA context: {error}"),
    }
    result
}
