//! The runtime's error type.

use minf_codegen::{RenderError, SpecError};

/// Everything that can go wrong between a spec and a finished launch.
#[derive(Debug, thiserror::Error)]
pub enum MinfError {
    /// The kernel spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// NVRTC or the kernel cache failed.
    #[error(transparent)]
    Jit(#[from] crate::jit::JitError),
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {context}: {source}")]
    Driver {
        /// What minf was doing.
        context: String,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },
    /// No CUDA driver (`libcuda`) could be loaded.
    #[error(
        "no CUDA driver found (libcuda could not be loaded): minf needs an NVIDIA GPU and its driver to run kernels"
    )]
    NoDriver,
    /// The driver loaded but there is no GPU with that ordinal.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice {
        /// The requested ordinal.
        ordinal: usize,
        /// How many devices the driver sees.
        count: i32,
    },
    /// The device's compute capability has no supported target.
    #[error(
        "unsupported GPU {name} with compute capability {major}.{minor}: minf supports 8.0, 8.6, 8.7, 8.9 and 9.0"
    )]
    UnsupportedDevice {
        /// Device name.
        name: String,
        /// Major compute capability.
        major: i32,
        /// Minor compute capability.
        minor: i32,
    },
    /// A per-head pattern config is invalid: the config module's error, which converts into this
    /// variant (downcast the box to read its details).
    #[error(transparent)]
    Config(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Tensor shapes, strides or options do not fit the call.
    #[error("invalid arguments: {0}")]
    Shape(String),
    /// A pattern search cannot go on: its input files, its progress file, or one of its threads.
    #[error("search: {0}")]
    Search(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A safetensors file is malformed or does not hold what minf expects.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl MinfError {
    /// Wraps a driver error with what minf was doing.
    pub fn driver(context: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> MinfError {
        let context = context.into();
        move |source| MinfError::Driver { context, source }
    }
}
