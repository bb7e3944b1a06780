//! The estimation kernels without a GPU: the tensor-core vertical-slash scores (`vs_scores`) and
//! the selections (`est_select`: vertical-slash top-k, block-sparse pooling and selection) render
//! header-free with every entry point the runtime loads, and NVRTC compiles them to CUBINs for
//! sm_80 and sm_90a (NVRTC must be installed; this test fails, not skips, without it). Their
//! results are checked on a GPU in `tests/gpu/estimate.rs`.

use minf_codegen::{render_index, Arch, IndexKernel, IndexKernelSpec};
use minf_runtime::jit::KernelCache;

fn compiles_with_entries(kernel: IndexKernel, entries: &[String]) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = KernelCache::at(dir.path().to_path_buf());
    for arch in [Arch::Sm80, Arch::Sm90a] {
        let spec = IndexKernelSpec { kernel, arch };
        let rendered = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        assert!(!rendered.source.contains("#include"), "{kernel:?} must be header-free");
        for entry in entries {
            let name = format!("{}{entry}", spec.kernel_name());
            assert!(rendered.source.contains(&format!("{name}(")), "missing entry point {name}");
        }
        let compiled = cache.get_or_compile(&rendered).unwrap_or_else(|e| panic!("compiling {spec:?}: {e}"));
        assert!(!compiled.is_ptx, "{arch}: expected a CUBIN");
        assert_eq!(&compiled.image[..4], b"\x7fELF", "{arch}: CUBIN without the ELF magic");
    }
}

#[test]
fn scores_template_compiles_for_sm80_and_sm90a() {
    let mut entries = vec!["_combine".to_string()];
    for head_dim in [64, 96, 128, 256] {
        for dtype in ["bf16", "f16"] {
            entries.push(format!("_stats_{dtype}_d{head_dim}"));
            entries.push(format!("_accumulate_{dtype}_d{head_dim}"));
        }
    }
    compiles_with_entries(IndexKernel::VerticalSlashScores, &entries);
}

#[test]
fn selection_template_compiles_for_sm80_and_sm90a() {
    let entries = ["_vertical_slash", "_block_pool", "_block_select"].map(String::from);
    compiles_with_entries(IndexKernel::EstimateSelect, &entries);
}
