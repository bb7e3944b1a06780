//! Kernels declared with `#[sparse_attention]` are registered with the right specs and can be
//! warmed ahead of time.

use minf::codegen::{Arch, DType, KernelSpec, Mainloop, Pattern, SpecError};
use minf::jit::KernelCache;
use minf::{registered, sparse_attention, warm_registered, MinfError, RegisteredKernel, SparseAttentionKernel};

/// Defaults everywhere but the pattern and head dimension.
#[sparse_attention(pattern = "dense", head_dim = 128)]
struct Prefill;

/// Items named like the generated code's locals do not disturb it.
#[allow(non_camel_case_types, non_upper_case_globals, dead_code)]
mod shadowing {
    struct defaults;
    const arch: u8 = 0;

    /// A raw identifier: named `Match`.
    #[minf::sparse_attention(pattern = "dense", head_dim = 128)]
    pub struct r#Match;
}

/// The same kernel as `Prefill` under another name: warmed once.
#[sparse_attention(pattern = "dense", head_dim = 128, dtype = "bf16")]
struct PrefillAlias;

/// Explicit tile and a pinned target.
#[sparse_attention(pattern = "dense", head_dim = 64, dtype = "f16", block_n = 32, stages = 3, arch = "sm_90a")]
struct PinnedHopper;

/// Every argument given, none at its default, on a struct with fields and derives.
#[sparse_attention(
    pattern = "dense",
    head_dim = 64,
    dtype = "f16",
    block_m = 64,
    block_n = 32,
    warps = 4,
    stages = 3,
    arch = "sm_86"
)]
#[derive(Debug, Default)]
struct Tuned {
    calls: u64,
}

/// 136 KiB of shared memory: valid for sm_80 and sm_90a (checked at compile time) but not for
/// sm_86 (99 KiB), which only the run-time check catches.
#[sparse_attention(pattern = "dense", head_dim = 128, block_n = 64, stages = 3)]
struct DeepPipeline;

fn find(name: &str) -> &'static RegisteredKernel {
    registered().find(|k| k.name == name).unwrap_or_else(|| panic!("{name} is not registered"))
}

#[test]
fn registry_lists_every_declared_kernel_with_its_spec() {
    let mut names: Vec<&str> = registered().map(|k| k.name).collect();
    names.sort_unstable();
    assert_eq!(names, ["DeepPipeline", "Match", "PinnedHopper", "Prefill", "PrefillAlias", "Tuned"]);
    assert_eq!((find("Match").spec)(Arch::Sm80), (find("Prefill").spec)(Arch::Sm80));

    let prefill = find("Prefill");
    assert_eq!(prefill.fixed_arch, None);
    for &arch in Arch::ALL {
        assert_eq!((prefill.spec)(arch), KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, arch));
    }
    assert_eq!(prefill.targets(&[Arch::Sm80, Arch::Sm86]), [Arch::Sm80, Arch::Sm86]);

    let pinned = find("PinnedHopper");
    assert_eq!(pinned.fixed_arch, Some(Arch::Sm90a));
    assert_eq!(pinned.targets(&[Arch::Sm80, Arch::Sm86]), [Arch::Sm90a]);
    // The default's tile with block_n 32, which no warpgroup engine takes (no tensor-map box, and
    // fewer k-steps than dense's four P V parts): mma_sync.
    let expected = KernelSpec {
        block_n: 32,
        stages: 3,
        mainloop: Mainloop::MmaSync,
        ..KernelSpec::default_for(Pattern::Dense, DType::F16, 64, Arch::Sm90a)
    };
    assert_eq!((pinned.spec)(Arch::Sm80), expected, "a pinned kernel ignores the requested arch");
}

#[test]
fn trait_constants_match_the_attribute() {
    assert_eq!(Prefill::NAME, "Prefill");
    assert_eq!(Prefill::PATTERN, Pattern::Dense);
    assert_eq!(Prefill::DTYPE, DType::Bf16);
    assert_eq!(Prefill::FIXED_ARCH, None);
    assert_eq!(PinnedHopper::DTYPE, DType::F16);
    assert_eq!(PinnedHopper::FIXED_ARCH, Some(Arch::Sm90a));
    assert_eq!(<PinnedHopper as SparseAttentionKernel>::spec(Arch::Sm86), (find("PinnedHopper").spec)(Arch::Sm86));
    assert_eq!(Tuned::NAME, "Tuned");
    assert_eq!((Tuned::PATTERN, Tuned::DTYPE, Tuned::FIXED_ARCH), (Pattern::Dense, DType::F16, Some(Arch::Sm86)));
    let tuned = KernelSpec {
        block_m: 64,
        block_n: 32,
        warps: 4,
        stages: 3,
        ..KernelSpec::default_for(Pattern::Dense, DType::F16, 64, Arch::Sm86)
    };
    assert_ne!(KernelSpec::default_for(Pattern::Dense, DType::F16, 64, Arch::Sm86), tuned);
    for &arch in Arch::ALL {
        assert_eq!(Tuned::spec(arch), tuned, "{arch}");
    }
    assert_eq!(Tuned::default().calls, 0);
    let deep = DeepPipeline::spec(Arch::Sm80);
    assert_eq!((deep.stages, deep.block_n), (3, 64));
    deep.validate().unwrap();
    DeepPipeline::spec(Arch::Sm90a).validate().unwrap();
    assert!(matches!(DeepPipeline::spec(Arch::Sm86).validate(), Err(SpecError::SharedMemory { .. })));
}

#[test]
fn warm_registered_reports_every_spec() {
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(dir.path().to_path_buf());
    // sm_86: Prefill (= PrefillAlias), DeepPipeline and Tuned for sm_86, PinnedHopper for its own
    // sm_90a.
    let report = warm_registered(&cache, &[Arch::Sm86]);
    assert_eq!(report.compiled + report.cached + report.failed.len(), 4, "{report:?}");
    assert!(report.seconds >= 0.0);
    // Whatever the JIT does, the spec that does not fit sm_86 fails before compiling, by name.
    let (label, err) = report.failed.iter().find(|(label, _)| label.starts_with("DeepPipeline")).expect("reported");
    assert_eq!(label, "DeepPipeline@sm_86");
    assert!(matches!(err, MinfError::Spec(SpecError::SharedMemory { .. })), "{err}");
    // Every spec that validates compiles (NVRTC is installed wherever the tests run).
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.compiled, 3, "{report:?}");
    let again = warm_registered(&cache, &[Arch::Sm86]);
    assert_eq!((again.compiled, again.cached, again.failed.len()), (0, 3, 1), "{again:?}");
}

#[test]
fn kernels_sharing_a_spec_are_compiled_once() {
    // Prefill and PrefillAlias share their spec on each arch: 2 (Prefill) + 2 (DeepPipeline) + 1
    // (PinnedHopper) + 1 (Tuned), plus the cp.async twins of the two sm_90a tensor-map specs.
    for kernel in ["Prefill", "DeepPipeline"] {
        assert!((find(kernel).spec)(Arch::Sm90a).cp_async_twin().is_some(), "{kernel} copies by tensor maps on sm_90a");
    }
    assert_eq!((find("PinnedHopper").spec)(Arch::Sm90a).cp_async_twin(), None);
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(dir.path().to_path_buf());
    let report = warm_registered(&cache, &[Arch::Sm80, Arch::Sm90a]);
    assert_eq!(report.compiled + report.cached + report.failed.len(), 8, "{report:?}");
}
