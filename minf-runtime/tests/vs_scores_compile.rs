//! The vertical-slash scores kernel without a GPU: it renders header-free with its three entry
//! points and NVRTC compiles it to a CUBIN for sm_80 and sm_90a (NVRTC must be installed; this
//! test fails, not skips, without it). Its numbers are checked on a GPU in `tests/gpu/estimate.rs`.

use minf_codegen::{render_index, Arch, IndexKernel, IndexKernelSpec};
use minf_runtime::jit::KernelCache;

#[test]
fn scores_template_compiles_for_sm80_and_sm90a() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = KernelCache::at(dir.path().to_path_buf());
    for arch in [Arch::Sm80, Arch::Sm90a] {
        let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashScores, arch };
        let rendered = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        assert!(!rendered.source.contains("#include"), "the scores kernel must be header-free");
        for entry in ["_partials", "_combine", "_accumulate"] {
            let name = format!("{}{entry}", spec.kernel_name());
            assert!(rendered.source.contains(&format!("{name}(")), "missing entry point {name}");
        }
        let compiled = cache.get_or_compile(&rendered).unwrap_or_else(|e| panic!("compiling {spec:?}: {e}"));
        assert!(!compiled.is_ptx, "{arch}: expected a CUBIN");
        assert_eq!(&compiled.image[..4], b"\x7fELF", "{arch}: CUBIN without the ELF magic");
    }
}
