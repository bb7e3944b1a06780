//! Rendering a [`KernelSpec`] into CUDA C++ with the Tera templates in `templates/`.
//!
//! The templates are header-free (NVRTC ships no `cuda_bf16.h`): 16-bit values are raw `uint16_t`
//! storage and every tensor-core, shared-memory and async-copy operation is inline PTX. Rendering
//! is deterministic: the same spec always gives the same bytes, so the source hash is a cache key.

use crate::abi::{
    self, AttentionParams, BlockParams, ChoiceParams, ConvertParams, KernelParams, MergeParams, ScoresParams,
    SelectParams, TensorMap, TensorMaps,
};
use crate::spec::{
    AnyKernel, Arch, DType, EntryPoint, IndexKernel, IndexKernelSpec, KernelSpec, Mainloop, SpecError, HEAD_DIMS,
};
use serde::Serialize;
use std::sync::OnceLock;

/// Every template file, by its path under `templates/`: `common/` (types, PTX primitives, the
/// rendered ABI), `attention/` (the kernel entry, the mainloop parts every engine shares, the
/// engines and the schedules) and `index/` (one module per index kernel).
const TEMPLATES: &[(&str, &str)] = &[
    ("common/types.cu.tera", include_str!("../../templates/common/types.cu.tera")),
    ("common/ptx.cu.tera", include_str!("../../templates/common/ptx.cu.tera")),
    ("common/hopper.cu.tera", include_str!("../../templates/common/hopper.cu.tera")),
    ("common/abi.cu.tera", include_str!("../../templates/common/abi.cu.tera")),
    ("common/block.cu.tera", include_str!("../../templates/common/block.cu.tera")),
    ("attention/kernel.cu.tera", include_str!("../../templates/attention/kernel.cu.tera")),
    ("attention/mainloop/config.cu.tera", include_str!("../../templates/attention/mainloop/config.cu.tera")),
    ("attention/mainloop/tiles.cu.tera", include_str!("../../templates/attention/mainloop/tiles.cu.tera")),
    ("attention/mainloop/softmax.cu.tera", include_str!("../../templates/attention/mainloop/softmax.cu.tera")),
    ("attention/engines/mma_sync.cu.tera", include_str!("../../templates/attention/engines/mma_sync.cu.tera")),
    ("attention/engines/wgmma.cu.tera", include_str!("../../templates/attention/engines/wgmma.cu.tera")),
    (
        "attention/engines/wgmma_ahead_tiles.cu.tera",
        include_str!("../../templates/attention/engines/wgmma_ahead_tiles.cu.tera"),
    ),
    ("attention/schedules/dense.cu.tera", include_str!("../../templates/attention/schedules/dense.cu.tera")),
    ("attention/schedules/a_shape.cu.tera", include_str!("../../templates/attention/schedules/a_shape.cu.tera")),
    ("attention/schedules/indexed.cu.tera", include_str!("../../templates/attention/schedules/indexed.cu.tera")),
    ("index/vs_convert.cu.tera", include_str!("../../templates/index/vs_convert.cu.tera")),
    ("index/vs_scores.cu.tera", include_str!("../../templates/index/vs_scores.cu.tera")),
    ("index/est_select.cu.tera", include_str!("../../templates/index/est_select.cu.tera")),
    ("index/tile_choice.cu.tera", include_str!("../../templates/index/tile_choice.cu.tera")),
    ("index/lse_merge.cu.tera", include_str!("../../templates/index/lse_merge.cu.tera")),
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

/// A rendered module: what it is, its source, NVRTC options and entry points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedKernel {
    /// What was rendered.
    pub kernel: AnyKernel,
    /// The `extern "C"` entry point of an attention kernel; the prefix of an index module's entry
    /// points.
    pub kernel_name: String,
    /// CUDA C++ source.
    pub source: String,
    /// NVRTC options.
    pub options: Vec<String>,
    /// Every entry point and how to launch it (one for an attention kernel).
    pub entries: Vec<EntryPoint>,
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
    /// The warpgroup engine's producer copies through tensor maps (`wgmma_tma` and its variants).
    tma: bool,
    /// The two consumer warpgroups take turns issuing their products (`wgmma_tma_pingpong`).
    pingpong: bool,
    /// Each consumer runs a tile's softmax while the previous tile's P V is in flight
    /// (`wgmma_tma_overlap`).
    overlap: bool,
    /// Blocks walk the launch's work items in turn, with two Q buffers ([`KernelSpec::persistent`]).
    persistent: bool,
    /// [`KernelSpec::tma_producer_registers`] (tensor-map engines only).
    producer_registers: u32,
    /// [`KernelSpec::output_parts`] (warpgroup engines).
    pv_parts: u32,
    /// n8 tiles of S and of O (the wgmma N dimensions / 8).
    s_tiles: u32,
    o_tiles: u32,
    arch: &'static str,
    mainloop: &'static str,
    /// [`KernelSpec::merges_column_lists`].
    merges_column_lists: bool,
    /// [`KernelSpec::lists_tiles`].
    lists_tiles: bool,
    /// The C declarations of the kernel ABI ([`crate::abi`]).
    abi: String,
}

/// The C text of the ABI a kernel uses: the shared constants it names, then its parameter structs.
fn abi_text(constants: &[&str], structs: &[String]) -> Result<String, RenderError> {
    let mut text = String::new();
    for name in constants {
        let constant = abi::constant(name)
            .ok_or_else(|| RenderError::Template(format!("no shared constant named {name} in abi.rs")))?;
        text.push_str(&constant.c_declaration());
    }
    for declaration in structs {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(declaration);
    }
    Ok(text.trim_end().to_string())
}

/// What the index templates see.
#[derive(Serialize)]
struct IndexContext {
    kernel_name: String,
    threads: u32,
    arch: &'static str,
    abi: String,
    /// The vertical-slash score passes' entry points, one pair per element type and head dimension.
    score_entries: Vec<ScoreEntry>,
}

/// The two score passes of one element type and head dimension.
#[derive(Serialize)]
struct ScoreEntry {
    dtype: &'static str,
    head_dim: u32,
    /// Whether the MMA reads f16 (else bf16).
    f16: bool,
    stats_entry: String,
    accumulate_entry: String,
    stats_bytes: u32,
    accumulate_bytes: u32,
    /// Blocks per SM the accumulating pass's registers must allow.
    accumulate_blocks: u32,
}

/// Blocks per SM the accumulating vertical-slash score pass is compiled to allow (its launch
/// bounds cap the registers to match): three for head_dim 64 where three blocks' shared memory
/// fits an SM (Hopper), else two.
fn score_accumulate_blocks(arch: Arch, head_dim: u32) -> u32 {
    let block_bytes = abi::score_shared_bytes(head_dim, true) + 1024;
    if head_dim <= 64 && 3 * block_bytes <= arch.shared_memory_per_sm() {
        3
    } else {
        2
    }
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
    /// The entry point named `name`, if the module has one.
    pub fn entry(&self, name: &str) -> Option<&EntryPoint> {
        self.entries.iter().find(|entry| entry.name == name)
    }

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
    // The shared constants and structs the kernel reads: the tensor maps' where it copies by them,
    // the tile list's where it lists its tiles.
    let mut constants = Vec::new();
    let mut structs = vec![AttentionParams::c_declaration()];
    if spec.mainloop.uses_tensor_maps() {
        constants.extend(["TMA_BOX_ROWS", "TMA_BOX_COLUMNS"]);
        structs.extend([TensorMap::C_DECLARATION.to_string(), TensorMaps::c_declaration()]);
    }
    if spec.lists_tiles() {
        constants.extend(["TILE_LIST_CAPACITY", "TILE_LIST_RECORD_BYTES"]);
    }
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
        wgmma: spec.mainloop.is_warpgroup(),
        tma: spec.mainloop.uses_tensor_maps(),
        pingpong: spec.mainloop == Mainloop::WgmmaTmaPingPong,
        overlap: spec.mainloop == Mainloop::WgmmaTmaOverlap,
        persistent: spec.persistent(),
        producer_registers: spec.tma_producer_registers(),
        pv_parts: spec.output_parts(),
        s_tiles: spec.block_n / 8,
        o_tiles: spec.head_dim / 8,
        arch: spec.arch.as_str(),
        mainloop: spec.mainloop.as_str(),
        merges_column_lists: spec.merges_column_lists(),
        lists_tiles: spec.lists_tiles(),
        abi: abi_text(&constants, &structs)?,
    };
    let context = tera::Context::from_serialize(&context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    let source =
        engine()?.render("attention/kernel.cu.tera", &context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    Ok(RenderedKernel {
        kernel: AnyKernel::Attention(*spec),
        kernel_name: spec.kernel_name(),
        source,
        options: compile_options(spec.arch),
        entries: spec.entries(),
    })
}

/// Renders an index kernel.
pub fn render_index(spec: &IndexKernelSpec) -> Result<RenderedKernel, RenderError> {
    let abi = match spec.kernel {
        IndexKernel::VerticalSlashConvert => {
            abi_text(&["INDEX_BLOCK", "CONVERT_STAGED_INTS"], &[ConvertParams::c_declaration()])?
        }
        IndexKernel::VerticalSlashScores => {
            abi_text(&["LAST_Q", "SCORE_CHUNK_KEYS", "SCORE_HEADS_PER_BLOCK"], &[ScoresParams::c_declaration()])?
        }
        IndexKernel::EstimateSelect => abi_text(
            &[
                "INDEX_BLOCK",
                "FORCED_COLUMNS",
                "FORCED_DIAGONALS",
                "SELECT_THREADS",
                "SELECT_SHORT_ROWS",
                "SELECT_PREFIX_BITS",
                "SELECT_HELD_SURVIVORS",
                "SELECT_STREAM_BUFFER",
                "SELECT_STREAM_CHUNK",
                "MAX_BLOCK_SPARSE_ROWS",
                "SELECT_SEGMENT_KEYS",
                "SELECT_SEGMENT_THREADS",
                "RADIX_BINS",
                "SELECT_STATE_INTS",
                "POOL_THREADS",
                "BLOCK_SCORE_TILE",
                "BLOCK_SCORE_THREADS",
            ],
            &[SelectParams::c_declaration(), BlockParams::c_declaration()],
        )?,
        IndexKernel::TileChoice => abi_text(&["INDEX_BLOCK"], &[ChoiceParams::c_declaration()])?,
        IndexKernel::LseMerge => abi_text(&[], &[MergeParams::c_declaration()])?,
    };
    let mut score_entries = Vec::new();
    if spec.kernel == IndexKernel::VerticalSlashScores {
        for &head_dim in HEAD_DIMS {
            for &dtype in DType::ALL {
                score_entries.push(ScoreEntry {
                    dtype: dtype.as_str(),
                    head_dim,
                    f16: dtype == DType::F16,
                    stats_entry: spec.score_entry_name("stats", dtype, head_dim),
                    accumulate_entry: spec.score_entry_name("accumulate", dtype, head_dim),
                    stats_bytes: abi::score_shared_bytes(head_dim, false),
                    accumulate_bytes: abi::score_shared_bytes(head_dim, true),
                    accumulate_blocks: score_accumulate_blocks(spec.arch, head_dim),
                });
            }
        }
    }
    let context = IndexContext {
        kernel_name: spec.kernel_name(),
        threads: IndexKernelSpec::THREADS,
        arch: spec.arch.as_str(),
        abi,
        score_entries,
    };
    let context = tera::Context::from_serialize(&context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    let template = format!("index/{}.cu.tera", spec.template());
    let source = engine()?.render(&template, &context).map_err(|e| RenderError::Template(format!("{e:?}")))?;
    Ok(RenderedKernel {
        kernel: AnyKernel::Index(*spec),
        kernel_name: spec.kernel_name(),
        source,
        options: compile_options(spec.arch),
        entries: spec.entries(),
    })
}

/// Renders anything minf compiles.
pub fn render_any(kernel: &AnyKernel) -> Result<RenderedKernel, RenderError> {
    match kernel {
        AnyKernel::Attention(spec) => render(spec),
        AnyKernel::Index(spec) => render_index(spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accumulating_pass_takes_three_blocks_where_their_shared_memory_fits() {
        // About 61 KB a block at head_dim 64: three fit Hopper's 228 KB, two an A100's 164 KB.
        assert_eq!(score_accumulate_blocks(Arch::Sm90a, 64), 3);
        assert_eq!(score_accumulate_blocks(Arch::Sm80, 64), 2);
        for head_dim in [96, 128, 256] {
            assert_eq!(score_accumulate_blocks(Arch::Sm90a, head_dim), 2, "d{head_dim}");
        }
    }
}
