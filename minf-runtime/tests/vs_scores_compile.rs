//! The estimation kernels without a GPU: the tensor-core vertical-slash scores (`vs_scores`) and
//! the selections (`est_select`: vertical-slash top-k, block-sparse pooling and selection) render
//! header-free with every entry point the runtime loads, for sm_80 and sm_90a. NVRTC compiles them
//! to CUBINs for both in the root crate's `tests/cache_concurrency.rs` (`minf warm` compiles every
//! index kernel). Their results are checked on a GPU in `tests/gpu/estimate.rs`.

use minf_codegen::{render_index, Arch, IndexKernel, IndexKernelSpec};

fn renders_with_entries(kernel: IndexKernel, entries: &[String]) {
    for arch in [Arch::Sm80, Arch::Sm90a] {
        let spec = IndexKernelSpec { kernel, arch };
        let rendered = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        assert!(!rendered.source.contains("#include"), "{kernel:?} must be header-free");
        for entry in entries {
            let name = format!("{}{entry}", spec.kernel_name());
            assert!(rendered.source.contains(&format!("{name}(")), "missing entry point {name}");
        }
    }
}

#[test]
fn scores_template_renders_every_entry_point() {
    let mut entries = vec!["_combine".to_string()];
    for head_dim in [64, 96, 128, 256] {
        for dtype in ["bf16", "f16"] {
            entries.push(format!("_stats_{dtype}_d{head_dim}"));
            entries.push(format!("_accumulate_{dtype}_d{head_dim}"));
        }
    }
    renders_with_entries(IndexKernel::VerticalSlashScores, &entries);
}

#[test]
fn selection_template_renders_every_entry_point() {
    let entries = ["_vertical_slash", "_block_pool", "_block_select"].map(String::from);
    renders_with_entries(IndexKernel::EstimateSelect, &entries);
}
