//! One CUDA device: its context and stream, the target architecture, and the kernels loaded into
//! the context (memory cache keyed by spec, in front of the disk cache).

use crate::error::MinfError;
use crate::jit::KernelCache;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use minf_codegen::abi::KernelParams;
use minf_codegen::{render_any, AnyKernel, Arch, EntryPoint, IndexKernelSpec, KernelSpec, LaunchShape};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A loaded kernel entry point and how to launch it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The function in this device's context.
    pub function: CudaFunction,
    /// Threads, shared memory and rows per block.
    pub launch: LaunchShape,
    /// Blocks of it the device runs at once: its multiprocessors times the blocks that fit one
    /// (the grid of a kernel whose blocks walk the work items).
    pub resident_blocks: u32,
}

impl LoadedKernel {
    /// The launch of a grid of `grid` blocks of this kernel: its threads per block and its dynamic
    /// shared memory.
    pub fn config(&self, grid: (u32, u32, u32)) -> LaunchConfig {
        LaunchConfig {
            grid_dim: grid,
            block_dim: (self.launch.threads, 1, 1),
            shared_mem_bytes: self.launch.shared_bytes,
        }
    }
}

/// A kernel parameter struct ([`minf_codegen::abi`]) as a launch argument, passed by value.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelArgs<P: KernelParams>(pub P);

// SAFETY: `KernelParams` types are `#[repr(C)]` plain-old-data whose layout is the C declaration
// the kernels are rendered with (minf_codegen::abi checks it against the C layout rules).
unsafe impl<P: KernelParams> DeviceRepr for KernelArgs<P> {}

/// A compiled module in this context, with its entry points and cache name.
#[derive(Debug, Clone)]
struct LoadedModule {
    module: Arc<CudaModule>,
    entries: Vec<EntryPoint>,
    name: String,
}

/// A CUDA device ready to run minf kernels.
#[derive(Debug)]
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    name: String,
    multiprocessors: u32,
    // Shared with the views of [`Device::with_stream`].
    cache: Arc<KernelCache>,
    modules: Arc<Mutex<HashMap<AnyKernel, LoadedModule>>>,
    functions: Arc<Mutex<HashMap<(AnyKernel, String), LoadedKernel>>>,
}

/// Whether the CUDA driver library can be loaded in this process.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the driver library by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A GPU as the driver describes it, without creating a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// The NVRTC target minf would use, `None` if the GPU is not supported.
    pub arch: Option<Arch>,
    /// CUDA driver API version (major, minor), e.g. (13, 0).
    pub driver_version: (i32, i32),
}

/// Describes device `ordinal`; [`MinfError::NoDriver`] when libcuda cannot be loaded and
/// [`MinfError::NoDevice`] when there is no such GPU.
pub fn probe(ordinal: usize) -> Result<GpuInfo, MinfError> {
    use cudarc::driver::result;
    if !driver_available() {
        return Err(MinfError::NoDriver);
    }
    result::init().map_err(MinfError::driver("initialising the CUDA driver"))?;
    let mut version = 0;
    // SAFETY: the driver is loaded and initialised; the pointer is valid for a write.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(MinfError::driver("reading the driver version"))?;
    let count = result::device::get_count().map_err(MinfError::driver("counting devices"))?;
    let index = i32::try_from(ordinal).ok().filter(|&i| i < count).ok_or(MinfError::NoDevice { ordinal, count })?;
    let dev = result::device::get(index).map_err(MinfError::driver(format!("opening device {ordinal}")))?;
    let name = result::device::get_name(dev).map_err(MinfError::driver("reading the device name"))?;
    let attribute = |attribute| {
        // SAFETY: `dev` came from `cuDeviceGet`.
        unsafe { result::device::get_attribute(dev, attribute) }
            .map_err(MinfError::driver("reading the compute capability"))
    };
    use cudarc::driver::sys::CUdevice_attribute as A;
    let major = attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok(GpuInfo {
        ordinal,
        name,
        compute_capability: (major, minor),
        arch: Arch::for_compute_capability(major, minor),
        driver_version: (version / 1000, (version % 1000) / 10),
    })
}

impl Device {
    /// Opens device `ordinal` with the cache from the environment (`MINF_CACHE_DIR`).
    pub fn new(ordinal: usize) -> Result<Device, MinfError> {
        Device::with_cache(ordinal, KernelCache::from_env()?)
    }

    /// Opens device `ordinal` with an explicit kernel cache.
    pub fn with_cache(ordinal: usize, cache: KernelCache) -> Result<Device, MinfError> {
        if !driver_available() {
            return Err(MinfError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal).map_err(MinfError::driver(format!("opening device {ordinal}")))?;
        let name = ctx.name().map_err(MinfError::driver("reading the device name"))?;
        let (major, minor) = ctx.compute_capability().map_err(MinfError::driver("reading the compute capability"))?;
        let arch = Arch::for_compute_capability(major, minor).ok_or_else(|| MinfError::UnsupportedDevice {
            name: name.clone(),
            major,
            minor,
        })?;
        let multiprocessors = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(MinfError::driver("reading the multiprocessor count"))?;
        let stream = ctx.default_stream();
        Ok(Device {
            ctx,
            stream,
            arch,
            name,
            multiprocessors: u32::try_from(multiprocessors).unwrap_or(1).max(1),
            cache: Arc::new(cache),
            modules: Arc::default(),
            functions: Arc::default(),
        })
    }

    /// This device launching on `stream` (a stream of the same context, e.g. one borrowed from
    /// another library with [`crate::foreign`]): the kernel cache and every loaded kernel are
    /// shared with `self`.
    pub fn with_stream(&self, stream: Arc<CudaStream>) -> Result<Device, MinfError> {
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(MinfError::Shape(format!(
                "the stream belongs to another CUDA context than device {} ({})",
                self.ctx.ordinal(),
                self.name
            )));
        }
        Ok(Device {
            ctx: self.ctx.clone(),
            stream,
            arch: self.arch,
            name: self.name.clone(),
            multiprocessors: self.multiprocessors,
            cache: self.cache.clone(),
            modules: self.modules.clone(),
            functions: self.functions.clone(),
        })
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream minf launches on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The NVRTC target for this device (`sm_90a` on Hopper).
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The device's marketing name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel cache in use.
    pub fn cache(&self) -> &KernelCache {
        &self.cache
    }

    /// Loads (rendering and compiling on a cache miss) the attention kernel of `spec` into this
    /// context, with its shared-memory limit raised to what the spec needs.
    pub fn kernel(&self, spec: &KernelSpec) -> Result<LoadedKernel, MinfError> {
        let kernel = AnyKernel::Attention(*spec);
        self.function(&kernel, &spec.kernel_name())
    }

    /// Loads the tile-list pass of `spec`'s module ([`KernelSpec::lists_tiles`]).
    pub fn tile_list_kernel(&self, spec: &KernelSpec) -> Result<LoadedKernel, MinfError> {
        self.function(&AnyKernel::Attention(*spec), &spec.tile_list_name())
    }

    /// Loads entry point `entry` (one of [`IndexKernelSpec::entries`]) of an index kernel's
    /// module, with its shared-memory limit raised to what the entry's launch shape allows.
    pub fn index_kernel(&self, spec: &IndexKernelSpec, entry: &str) -> Result<LoadedKernel, MinfError> {
        self.function(&AnyKernel::Index(*spec), entry)
    }

    fn function(&self, kernel: &AnyKernel, entry: &str) -> Result<LoadedKernel, MinfError> {
        if let Some(found) = self.functions.lock().map_err(|_| poisoned())?.get(&(*kernel, entry.to_string())) {
            return Ok(found.clone());
        }
        // Compiling (NVRTC, seconds) happens outside the lock, so threads that need different
        // kernels compile in parallel; if two race for the same one, the first module stored wins.
        let known = self.modules.lock().map_err(|_| poisoned())?.get(kernel).cloned();
        let LoadedModule { module, entries, name } = match known {
            Some(loaded) => loaded,
            None => {
                let rendered = render_any(kernel)?;
                let cached = self.cache.get_or_compile(&rendered)?;
                let image = if cached.is_ptx {
                    Ptx::from_src(String::from_utf8_lossy(&cached.image).trim_end_matches('\0').to_string())
                } else {
                    Ptx::from_binary(cached.image.as_ref().clone())
                };
                let module =
                    self.ctx.load_module(image).map_err(MinfError::driver(format!("loading {}", cached.key.name)))?;
                let loaded = LoadedModule { module, entries: rendered.entries, name: cached.key.name };
                self.modules.lock().map_err(|_| poisoned())?.entry(*kernel).or_insert(loaded).clone()
            }
        };
        let launch = entries.iter().find(|e| e.name == entry).map(|e| e.launch).ok_or_else(|| {
            let known: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            MinfError::Shape(format!("{name} has no entry point {entry}; it has {}", known.join(", ")))
        })?;
        let function = module.load_function(entry).map_err(MinfError::driver(format!("finding {entry} in {name}")))?;
        // The one place that opts a function in to more than the default 48 KiB of dynamic shared
        // memory: up to what its launch shape says any launch of it passes.
        if launch.shared_bytes > 0 {
            function
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    launch.shared_bytes as i32,
                )
                .map_err(MinfError::driver(format!(
                    "raising the shared-memory limit of {entry} to {} bytes",
                    launch.shared_bytes
                )))?;
        }
        let per_multiprocessor = function
            .occupancy_max_active_blocks_per_multiprocessor(launch.threads, launch.shared_bytes as usize, None)
            .map_err(MinfError::driver(format!("reading the occupancy of {entry}")))?;
        let resident_blocks = self.multiprocessors * per_multiprocessor.max(1);
        let loaded = LoadedKernel { function, launch, resident_blocks };
        self.functions.lock().map_err(|_| poisoned())?.insert((*kernel, entry.to_string()), loaded.clone());
        Ok(loaded)
    }
}

/// Makes `slot` a device buffer of at least `len` elements in `stream`'s context, keeping the one it
/// holds when that is large enough (a workspace grows on demand and may move between devices).
/// A new buffer is zero-filled once, when it is allocated (not on reuse): an element no launch wrote
/// (e.g. the scores of heads an estimate did not list) reads as zero, never as uninitialised memory.
pub(crate) fn reserve_buffer<T: DeviceRepr + ValidAsZeroBits>(
    slot: &mut Option<CudaSlice<T>>,
    stream: &Arc<CudaStream>,
    len: usize,
    what: &str,
) -> Result<(), MinfError> {
    if slot.as_ref().is_some_and(|b| b.len() >= len && Arc::ptr_eq(b.context(), stream.context())) {
        return Ok(());
    }
    *slot = None;
    let buffer = stream
        .alloc_zeros::<T>(len.max(1))
        .map_err(MinfError::driver(format!("allocating {what} ({len} elements)")))?;
    *slot = Some(buffer);
    Ok(())
}

fn poisoned() -> MinfError {
    MinfError::Shape("kernel table poisoned by a panic in another thread".into())
}
