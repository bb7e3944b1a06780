//! Rendering a [`KernelSpec`] into CUDA C++ with the Tera templates in `templates/`.
//!
//! The templates are header-free (NVRTC ships no `cuda_bf16.h`): 16-bit values are raw `uint16_t`
//! storage and every tensor-core, shared-memory and async-copy operation is inline PTX. Rendering
//! is deterministic: the same spec always gives the same bytes, so the source hash is a cache key.

use crate::spec::{AnyKernel, Arch, IndexKernelSpec, KernelSpec, LaunchShape, Mainloop, SpecError};
use serde::Serialize;
use std::sync::OnceLock;

/// Every template file, by name; partials are included by the pattern kernels.
const TEMPLATES: &[(&str, &str)] = &[
    ("ptx.cu.tera", include_str!("../../templates/ptx.cu.tera")),
    ("mainloop.cu.tera", include_str!("../../templates/mainloop.cu.tera")),
    ("mainloop_mma.cu.tera", include_str!("../../templates/mainloop_mma.cu.tera")),
    ("mainloop_wgmma.cu.tera", include_str!("../../templates/mainloop_wgmma.cu.tera")),
    ("entry.cu.tera", include_str!("../../templates/entry.cu.tera")),
    ("indexed.cu.tera", include_str!("../../templates/indexed.cu.tera")),
    ("dense.cu.tera", include_str!("../../templates/dense.cu.tera")),
    ("a_shape.cu.tera", include_str!("../../templates/a_shape.cu.tera")),
    ("vertical_slash.cu.tera", include_str!("../../templates/vertical_slash.cu.tera")),
    ("block_sparse.cu.tera", include_str!("../../templates/block_sparse.cu.tera")),
    ("vs_convert.cu.tera", include_str!("../../templates/vs_convert.cu.tera")),
    ("tile_choice.cu.tera", include_str!("../../templates/tile_choice.cu.tera")),
    ("vs_scores.cu.tera", include_str!("../../templates/vs_scores.cu.tera")),
    ("est_select.cu.tera", include_str!("../../templates/est_select.cu.tera")),
];

/// Errors while rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The spec is not valid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A template failed to parse or render (a bug in minf's templates).
    #[error("template error: {0}")]
    Template(String),
}

/// A rendered kernel: what it is, its entry point, source, NVRTC options and launch geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedKernel {
    /// What was rendered.
    pub kernel: AnyKernel,
    /// The `extern "C"` entry point.
    pub kernel_name: String,
    /// CUDA C++ source.
    pub source: String,
    /// NVRTC options.
    pub options: Vec<String>,
    /// How to launch it.
    pub launch: LaunchShape,
}

/// Values the templates see, derived from the spec.
#[derive(Serialize)]
struct TemplateContext {
    kernel_name: String,
    pattern: &'static str,
    dtype: &'static str,
    /// PTX type of the MMA operands: `bf16` or `f16`.
    mma_type: &'static str,
    head_dim: u32,
    block_m: u32,
    block_n: u32,
    warps: u32,
    threads: u32,
    stages: u32,
    m_frags: u32,
    q_in_registers: bool,
    smem_row: u32,
    /// Hopper warpgroup MMA instead of per-warp `mma.sync`.
    wgmma: bool,
    /// n8 tiles of S and of O (the wgmma N dimensions / 8).
    s_tiles: u32,
    o_tiles: u32,
    arch: &'static str,
}

fn engine() -> Result<&'static tera::Tera, RenderError> {
    static ENGINE: OnceLock<Result<tera::Tera, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut tera = tera::Tera::default();
            tera.autoescape_on(vec![]);
            tera.add_raw_templates(TEMPLATES.iter().copied()).map_err(|e| format!("{e:?}"))?;
            Ok(tera)
        })
        .as_ref()
        .map_err(|e| RenderError::Template(e.clone()))
}

impl RenderedKernel {
    /// Target architecture.
    pub fn arch(&self) -> Arch {
        self.kernel.arch()
    }

    /// Readable prefix of its cache entry name.
    pub fn readable_name(&self) -> String {
        self.kernel.readable_name()
    }
}

/// NVRTC options for an architecture: target, C++17 and fast math (`ex2.approx` for softmax).
pub fn compile_options(arch: Arch) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", arch.as_str()),
        "--std=c++17".to_string(),
        "--use_fast_math".to_string(),
        "--generate-line-info".to_string(),
    ]
}

/// Validates `spec` and renders its kernel.
pub fn render(spec: &KernelSpec) -> Result<RenderedKernel, RenderError> {
    spec.validate()?;
    let context = TemplateContext {
        kernel_name: spec.kernel_name(),
        pattern: spec.pattern.as_str(),
        dtype: spec.dtype.as_str(),
        mma_type: spec.dtype.as_str(),
        head_dim: spec.head_dim,
        block_m: spec.block_m,
        block_n: spec.block_n,
        warps: spec.warps,
        threads: spec.threads(),
        stages: spec.stages,
        m_frags: spec.m_frags(),
        q_in_registers: spec.q_in_registers() && spec.mainloop == Mainloop::MmaSync,
        smem_row: spec.smem_row(),
        wgmma: spec.mainloop == Mainloop::Wgmma,
        s_tiles: spec.block_n / 8,
        o_tiles: spec.head_dim / 8,
        arch: spec.arch.as_str(),
    };
    let context = tera::Context::from_serialize(&context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    let template = format!("{}.cu.tera", spec.pattern.as_str());
    let source = engine()?.render(&template, &context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    Ok(RenderedKernel {
        kernel: AnyKernel::Attention(*spec),
        kernel_name: spec.kernel_name(),
        source,
        options: compile_options(spec.arch),
        launch: spec.launch_shape(),
    })
}

/// Renders an index kernel.
pub fn render_index(spec: &IndexKernelSpec) -> Result<RenderedKernel, RenderError> {
    #[derive(Serialize)]
    struct IndexContext {
        kernel_name: String,
        threads: u32,
        arch: &'static str,
    }
    let context =
        IndexContext { kernel_name: spec.kernel_name(), threads: IndexKernelSpec::THREADS, arch: spec.arch.as_str() };
    let context = tera::Context::from_serialize(&context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    let template = format!("{}.cu.tera", spec.template());
    let source = engine()?.render(&template, &context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    Ok(RenderedKernel {
        kernel: AnyKernel::Index(*spec),
        kernel_name: spec.kernel_name(),
        source,
        options: compile_options(spec.arch),
        launch: LaunchShape { threads: IndexKernelSpec::THREADS, shared_bytes: 0, block_m: 64 },
    })
}

/// Renders anything minf compiles.
pub fn render_any(kernel: &AnyKernel) -> Result<RenderedKernel, RenderError> {
    match kernel {
        AnyKernel::Attention(spec) => render(spec),
        AnyKernel::Index(spec) => render_index(spec),
    }
}
