//! The persistent engines without a GPU: the `wgmma_persistent` and `wgmma_tma_persistent` twins
//! of every sm_90a default on 128-row warpgroup blocks (each pattern, head dimension and dtype)
//! render with the work-item walk as their entry point, and NVRTC compiles them to CUBINs. Their
//! results are checked on a GPU by `tests/gpu/persistent.rs` and the `*Persistent` variants of
//! `tests/gpu/patterns.rs` and `tests/gpu/sanitize.rs`.

use minf_codegen::spec::HEAD_DIMS;
use minf_codegen::{render, Arch, DType, KernelSpec, Mainloop, Pattern};

fn persistent_specs() -> Vec<KernelSpec> {
    let mut specs = Vec::new();
    for &pattern in Pattern::ALL {
        for &dtype in DType::ALL {
            for &head_dim in HEAD_DIMS {
                let default = KernelSpec::default_for(pattern, dtype, head_dim, Arch::Sm90a);
                if default.mainloop != Mainloop::Wgmma {
                    continue;
                }
                let tile = KernelSpec { block_m: 128, block_n: 128, warps: 8, stages: 2, ..default };
                for mainloop in [Mainloop::WgmmaPersistent, Mainloop::WgmmaTmaPersistent] {
                    specs.push(KernelSpec { mainloop, ..tile });
                }
            }
        }
    }
    specs
}

#[test]
fn every_persistent_spec_renders_its_work_item_walk() {
    let specs = persistent_specs();
    // 4 patterns x 2 dtypes x head_dim 64, 96, 128 on the two engines.
    assert_eq!(specs.len(), 4 * 2 * 3 * 2);
    for spec in specs {
        spec.validate().unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        let source = render(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}")).source;
        assert!(
            source.contains("    attention_blocks<Schedule>(p"),
            "{spec:?}: entry point without the work-item walk"
        );
        assert!(source.contains("constexpr bool PERSISTENT = true;"), "{spec:?}");
        assert!(!source.contains("    attention_block(p, seq"), "{spec:?}: one block per item");
        assert_eq!(
            source.contains("const __grid_constant__ TensorMaps maps"),
            spec.mainloop == Mainloop::WgmmaTmaPersistent,
            "{spec:?}: tensor maps only on wgmma_tma_persistent"
        );
    }
}

/// NVRTC compiles each of them to a CUBIN (NVRTC must be installed; this fails, not skips,
/// without it).
#[test]
fn every_persistent_spec_compiles_for_sm90a() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = minf_runtime::jit::KernelCache::at(dir.path().to_path_buf());
    for spec in persistent_specs().into_iter().filter(|spec| spec.dtype == DType::Bf16 || spec.head_dim == 128) {
        let rendered = render(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        let compiled = cache.get_or_compile(&rendered).unwrap_or_else(|e| panic!("compiling {spec:?}: {e}"));
        assert!(!compiled.is_ptx, "{spec:?}: expected a CUBIN");
        assert_eq!(&compiled.image[..4], b"\x7fELF", "{spec:?}: CUBIN without the ELF magic");
    }
}
