//! Pins the generated source so any change that invalidates users' kernel caches shows up in
//! review (`cargo insta review`): a representative set in full (each pattern on each engine, each
//! index kernel), and every kernel minf renders by the blake3 hash of its source in one listing
//! (`snapshots__kernel_hashes.snap`).

use minf_codegen::{
    render, render_any, render_index, AnyKernel, Arch, CacheKeyInputs, DType, IndexKernel, IndexKernelSpec, KernelSpec,
    Mainloop, Pattern,
};

/// The spec pinned in full for `pattern` on `arch`: the bf16, head_dim 128 default (`mma.sync` on
/// sm_80; on sm_90a `wgmma`, with the tensor-map producer for dense and A-shape).
fn representative(pattern: Pattern, arch: Arch) -> KernelSpec {
    KernelSpec::default_for(pattern, DType::Bf16, 128, arch)
}

/// Every kernel minf renders by default: the default specs of every architecture, then every
/// index kernel of every architecture, then the other warpgroup engines of every warpgroup
/// default: `wgmma`, `wgmma_tma` and `wgmma_tma_overlap`, and `wgmma_tma_pingpong` for the 8-warp
/// ones (selected by spec, and `wgmma` where a call's tensors cannot be mapped).
fn every_kernel() -> Vec<AnyKernel> {
    let defaults = KernelSpec::default_set(Arch::ALL);
    let mut kernels: Vec<AnyKernel> = defaults.iter().copied().map(AnyKernel::from).collect();
    for &arch in Arch::ALL {
        kernels.extend(IndexKernel::ALL.iter().map(|&kernel| AnyKernel::from(IndexKernelSpec { kernel, arch })));
    }
    let engines = [Mainloop::Wgmma, Mainloop::WgmmaTma, Mainloop::WgmmaTmaPingPong, Mainloop::WgmmaTmaOverlap];
    let mut listed: Vec<KernelSpec> = defaults.clone();
    for mainloop in engines {
        for spec in defaults.iter().filter(|spec| spec.mainloop.is_warpgroup()) {
            let twin = KernelSpec { mainloop, ..*spec };
            if (mainloop != Mainloop::WgmmaTmaPingPong || spec.warps == 8) && !listed.contains(&twin) {
                listed.push(twin);
                kernels.push(AnyKernel::from(twin));
            }
        }
    }
    kernels
}

#[test]
fn rendered_source_of_each_pattern_on_each_engine() {
    for &pattern in Pattern::ALL {
        for (arch, mainloop) in [(Arch::Sm80, Mainloop::MmaSync), (Arch::Sm90a, Mainloop::Wgmma)] {
            let spec = KernelSpec { mainloop, ..representative(pattern, arch) };
            assert_eq!(representative(pattern, arch).mainloop.is_warpgroup(), arch == Arch::Sm90a, "{spec:?}");
            let kernel = render(&spec).expect("default specs render");
            insta::assert_snapshot!(spec.readable_name(), kernel.source);
        }
    }
}

#[test]
fn rendered_source_of_each_pattern_on_the_tma_engine() {
    for &pattern in Pattern::ALL {
        let spec = KernelSpec { mainloop: Mainloop::WgmmaTma, ..representative(pattern, Arch::Sm90a) };
        let kernel = render(&spec).expect("tensor-map twins of the defaults render");
        insta::assert_snapshot!(spec.readable_name(), kernel.source);
    }
    let spec = KernelSpec { mainloop: Mainloop::WgmmaTmaPingPong, ..representative(Pattern::Dense, Arch::Sm90a) };
    let kernel = render(&spec).expect("the ping-pong twin of the dense default renders");
    insta::assert_snapshot!(spec.readable_name(), kernel.source);
    let spec = KernelSpec { mainloop: Mainloop::WgmmaTmaOverlap, ..representative(Pattern::Dense, Arch::Sm90a) };
    let kernel = render(&spec).expect("the overlap twin of the dense default renders");
    insta::assert_snapshot!(spec.readable_name(), kernel.source);
}

#[test]
fn rendered_source_of_each_index_kernel() {
    for &kernel in IndexKernel::ALL {
        let spec = IndexKernelSpec { kernel, arch: Arch::Sm90a };
        let rendered = render_index(&spec).expect("index kernels render");
        insta::assert_snapshot!(spec.readable_name(), rendered.source);
    }
}

#[test]
fn kernel_hashes() {
    // One line per kernel: its cache name prefix and the blake3 of its source. A template change
    // shows here as the list of kernels whose source it changes.
    let mut listing = String::new();
    for kernel in every_kernel() {
        let rendered = render_any(&kernel).expect("every default kernel renders");
        let hash = blake3::hash(rendered.source.as_bytes()).to_hex();
        listing.push_str(&format!("{:<48} {hash}\n", kernel.readable_name()));
    }
    insta::assert_snapshot!("kernel_hashes", listing);
}

#[test]
fn cache_key_inputs() {
    // A fixed NVRTC version keeps the snapshot independent of the machine; the sources' hashes are
    // pinned by `kernel_hashes`.
    let keys: Vec<(String, CacheKeyInputs, String)> = [
        AnyKernel::from(representative(Pattern::Dense, Arch::Sm80)),
        AnyKernel::from(IndexKernelSpec { kernel: IndexKernel::VerticalSlashConvert, arch: Arch::Sm90a }),
    ]
    .iter()
    .map(|kernel| {
        let rendered = render_any(kernel).expect("renders");
        let inputs = CacheKeyInputs::new(&rendered, (13, 0));
        let name = inputs.key(&kernel.readable_name()).name;
        (kernel.readable_name(), inputs, name)
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
fn templates_are_header_free_with_their_entry_points() {
    for kernel in every_kernel() {
        let rendered = render_any(&kernel).expect("renders");
        let name = kernel.readable_name();
        assert!(!rendered.source.contains("#include"), "{name} includes a header");
        assert!(!rendered.source.contains("{{") && !rendered.source.contains("{%"), "{name}: unrendered template");
        for entry in &rendered.entries {
            let bounds = match kernel {
                AnyKernel::Attention(spec) if entry.name == spec.tile_list_name() => "32",
                AnyKernel::Attention(spec) if spec.mainloop.is_warpgroup() => "THREADS, MIN_BLOCKS_PER_SM",
                AnyKernel::Attention(_) => "THREADS",
                AnyKernel::Index(_) => "",
            };
            let declaration = format!("__global__ void __launch_bounds__({bounds}");
            let found = rendered.source.lines().any(|line| {
                line.contains("extern \"C\" __global__")
                    && line.contains(&format!(" {}(", entry.name))
                    && line.contains(&declaration)
            });
            assert!(found, "{name} has no entry point `{}`", entry.name);
        }
    }
}

#[test]
fn every_parameter_struct_is_rendered_from_the_abi() {
    for kernel in every_kernel() {
        let source = render_any(&kernel).expect("renders").source;
        for struct_name in ["AttentionParams", "ConvertParams", "ChoiceParams", "ScoresParams", "SelectParams"] {
            let declared = source.matches(&format!("struct {struct_name} {{")).count();
            assert!(declared <= 1, "{} declares {struct_name} {declared} times", kernel.readable_name());
        }
        assert!(!source.contains("Mirrors"), "{}: a hand-written mirror of the ABI", kernel.readable_name());
    }
}
