//! The vertical-slash converter without a GPU: the CPU model against the format's guarantees and
//! against a port of MInference's walk, and the GPU template through NVRTC (NVRTC must be
//! installed; these tests fail, not skip, without it).

use minf_codegen::{render_index, Arch, IndexKernel, IndexKernelSpec};
use minf_runtime::jit::KernelCache;
use minf_runtime::vertical_slash::cpu::convert_cpu;
use minf_runtime::vertical_slash::{realised_mask_contains, HostVerticalSlashIndex, BLOCK};
use proptest::prelude::*;
use std::collections::BTreeSet;

#[test]
fn converter_template_compiles_for_sm80_and_sm90a() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = KernelCache::at(dir.path().to_path_buf());
    for arch in [Arch::Sm80, Arch::Sm90a] {
        let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashConvert, arch };
        let rendered = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        assert!(!rendered.source.contains("#include"), "the converter must be header-free");
        for entry in ["_lists", "_rows"] {
            let name = format!("{}{entry}", spec.kernel_name());
            assert!(rendered.source.contains(&format!("{name}(")), "missing entry point {name}");
        }
        let compiled = cache.get_or_compile(&rendered).unwrap_or_else(|e| panic!("compiling {spec:?}: {e}"));
        assert!(!compiled.is_ptx, "{arch}: expected a CUBIN");
        assert_eq!(&compiled.image[..4], b"\x7fELF", "{arch}: CUBIN without the ELF magic");
    }
}
