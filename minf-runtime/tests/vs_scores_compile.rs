//! The estimation kernels without a GPU: the tensor-core vertical-slash scores (`vs_scores`) and
//! the selections (`est_select`: vertical-slash top-k, block-sparse pooling, scores and selection) render
//! header-free for sm_80 and sm_90a with every entry point the runtime loads, and NVRTC compiles
//! them to CUBINs (as `tests/cache_concurrency.rs` does through `minf warm` of every kernel); their
//! results are checked on a GPU in `tests/gpu/estimate.rs`.

use minf_codegen::spec::HEAD_DIMS;
use minf_codegen::{render_index, Arch, DType, IndexKernel, IndexKernelSpec};

/// Renders `kernel` for sm_80 and sm_90a and checks that it declares every entry point the runtime
/// loads (`expected`, each also one of the module's launch-shape entries).
fn renders_with_entries(kernel: IndexKernel, expected: impl Fn(&IndexKernelSpec) -> Vec<String>) {
    for arch in [Arch::Sm80, Arch::Sm90a] {
        let spec = IndexKernelSpec { kernel, arch };
        let rendered = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        assert!(!rendered.source.contains("#include"), "{kernel:?} must be header-free");
        let names = expected(&spec);
        assert_eq!(rendered.entries.len(), names.len(), "{kernel:?}: {:?}", rendered.entries);
        for name in &names {
            assert!(rendered.entry(name).is_some(), "no launch shape for {name}");
            assert!(rendered.source.contains(&format!("{name}(")), "missing entry point {name}");
        }
    }
}

#[test]
fn scores_template_renders_every_entry_point() {
    renders_with_entries(IndexKernel::VerticalSlashScores, |spec| {
        let mut entries = vec![spec.entry_name("_combine")];
        for &head_dim in HEAD_DIMS {
            for &dtype in DType::ALL {
                entries.push(spec.score_entry_name("stats", dtype, head_dim));
                entries.push(spec.score_entry_name("accumulate", dtype, head_dim));
            }
        }
        entries
    });
}

#[test]
fn selection_template_renders_every_entry_point() {
    renders_with_entries(IndexKernel::EstimateSelect, |spec| {
        [
            "_vs_histogram",
            "_vs_count",
            "_vs_write",
            "_block_pool",
            "_block_scores",
            "_block_select",
            "_block_select_short",
            "_block_select_stream",
        ]
        .map(|suffix| spec.entry_name(suffix))
        .to_vec()
    });
}

/// NVRTC compiles both estimation modules to CUBINs for sm_80 and sm_90a (NVRTC must be installed;
/// this fails, not skips, without it), with no performance loss reported by ptxas (their sm_90a
/// `wgmma` products serialised, for one).
#[test]
fn estimation_templates_compile_for_sm80_and_sm90a() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = minf_runtime::jit::KernelCache::at(dir.path().to_path_buf());
    for kernel in [IndexKernel::VerticalSlashScores, IndexKernel::EstimateSelect] {
        for arch in [Arch::Sm80, Arch::Sm90a] {
            let spec = IndexKernelSpec { kernel, arch };
            let rendered = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
            let compiled = cache.get_or_compile(&rendered).unwrap_or_else(|e| panic!("compiling {spec:?}: {e}"));
            assert!(!compiled.is_ptx, "{spec:?}: expected a CUBIN");
            assert_eq!(&compiled.image[..4], b"\x7fELF", "{spec:?}: CUBIN without the ELF magic");
            assert!(compiled.performance_warnings.is_empty(), "{spec:?}: {:?}", compiled.performance_warnings);
        }
    }
}
