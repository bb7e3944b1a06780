//! Pins the generated source of every default spec and the cache-key inputs, so any change that
//! invalidates users' kernel caches shows up in review (`cargo insta review`).

use minf_codegen::{render, render_index, Arch, CacheKeyInputs, IndexKernel, IndexKernelSpec, KernelSpec, Mainloop};

const SNAPSHOT_ARCHES: &[Arch] = &[Arch::Sm80, Arch::Sm90a];

#[test]
fn rendered_source_of_every_default_spec() {
    for spec in KernelSpec::default_set(SNAPSHOT_ARCHES) {
        let kernel = render(&spec).expect("default specs render");
        insta::assert_snapshot!(spec.readable_name(), kernel.source);
    }
}

#[test]
fn rendered_source_of_the_vertical_slash_converter() {
    let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashConvert, arch: Arch::Sm90a };
    let kernel = render_index(&spec).expect("the converter renders");
    assert!(!kernel.source.contains("#include"), "the converter includes a header");
    insta::assert_snapshot!(spec.readable_name(), kernel.source);
}

#[test]
fn rendered_source_of_the_vertical_slash_scores() {
    let spec = IndexKernelSpec { kernel: IndexKernel::VerticalSlashScores, arch: Arch::Sm90a };
    let kernel = render_index(&spec).expect("the scores kernel renders");
    assert!(!kernel.source.contains("#include"), "the scores kernel includes a header");
    insta::assert_snapshot!(spec.readable_name(), kernel.source);
}

#[test]
fn rendered_source_of_the_tile_choice() {
    let spec = IndexKernelSpec { kernel: IndexKernel::TileChoice, arch: Arch::Sm90a };
    let kernel = render_index(&spec).expect("the tile choice renders");
    assert!(!kernel.source.contains("#include"), "the tile choice includes a header");
    insta::assert_snapshot!(spec.readable_name(), kernel.source);
}

#[test]
fn rendered_source_of_the_estimate_selections() {
    let spec = IndexKernelSpec { kernel: IndexKernel::EstimateSelect, arch: Arch::Sm90a };
    let kernel = render_index(&spec).expect("the selection kernel renders");
    assert!(!kernel.source.contains("#include"), "the selection kernel includes a header");
    insta::assert_snapshot!(spec.readable_name(), kernel.source);
}

#[test]
fn rendered_source_of_the_wgmma_engine() {
    // Not a default yet (bench/RESULTS.md): pinned here so its source is reviewed like the others.
    for pattern in [minf_codegen::Pattern::Dense, minf_codegen::Pattern::VerticalSlash] {
        let base = KernelSpec::default_for(pattern, minf_codegen::DType::Bf16, 128, Arch::Sm90a);
        let (block_m, warps) = if pattern.is_indexed() { (64, 4) } else { (128, 8) };
        let spec = KernelSpec { block_m, warps, mainloop: minf_codegen::Mainloop::Wgmma, ..base };
        let kernel = render(&spec).expect("wgmma specs render");
        assert!(kernel.source.contains("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"));
        insta::assert_snapshot!(spec.readable_name(), kernel.source);
    }
}

#[test]
fn cache_key_inputs_of_every_default_spec() {
    // A fixed NVRTC version keeps the snapshot independent of the machine.
    let keys: Vec<(String, CacheKeyInputs, String)> = KernelSpec::default_set(SNAPSHOT_ARCHES)
        .iter()
        .map(|spec| {
            let kernel = render(spec).expect("default specs render");
            let inputs = CacheKeyInputs::new(&kernel, (13, 0));
            let name = inputs.key(&spec.readable_name()).name;
            (spec.readable_name(), inputs, name)
        })
        .collect();
    insta::assert_json_snapshot!("cache_key_inputs", keys);
}

#[test]
fn rendering_is_deterministic_and_key_tracks_every_input() {
    let spec = KernelSpec::default_set(&[Arch::Sm90a])[0];
    let a = render(&spec).expect("renders");
    let b = render(&spec).expect("renders");
    assert_eq!(a.source, b.source);
    let key = a.cache_key((13, 0));
    assert_eq!(key, b.cache_key((13, 0)));
    assert!(key.name.starts_with("dense-bf16-d64-m128n128-sm90a-"), "{}", key.name);
    assert_ne!(key, a.cache_key((13, 1)), "NVRTC version must change the key");
    let mut other_options = a.clone();
    other_options.options.push("-G".into());
    assert_ne!(key, other_options.cache_key((13, 0)), "options must change the key");
    let mut other_source = a.clone();
    other_source.source.push(' ');
    assert_ne!(key, other_source.cache_key((13, 0)), "source must change the key");
}

#[test]
fn templates_are_header_free() {
    for spec in KernelSpec::default_set(SNAPSHOT_ARCHES) {
        let source = render(&spec).expect("renders").source;
        assert!(!source.contains("#include"), "{} includes a header", spec.readable_name());
        let bounds = match spec.mainloop {
            Mainloop::MmaSync => "THREADS",
            Mainloop::Wgmma => "THREADS, MIN_BLOCKS_PER_SM",
        };
        let entry = format!("__global__ void __launch_bounds__({bounds}) {}(", spec.kernel_name());
        assert!(source.contains(&entry), "{} has no entry `{entry}`", spec.readable_name());
    }
}
