//! Every tile the spec accepts compiles, without a GPU: one spec of each accepted (target,
//! pattern, engine, block_m, block_n, warps) on sm_80 and sm_90a, its head dimension and stage
//! count rotating over the accepted ones, is rendered and compiled by NVRTC to a CUBIN with no
//! ptxas performance warning. A tile that `KernelSpec::validate` accepts and the templates cannot
//! build (such as dense with `block_n = 32` on `wgmma`, whose four P V parts need four 16-key
//! k-steps) fails here, in CI, rather than at a user's first launch. NVRTC must be installed (the
//! test fails, not skips, without it).

use minf_codegen::spec::{BLOCK_MS, BLOCK_NS, HEAD_DIMS, STAGES, WARPS};
use minf_codegen::{render, Arch, DType, KernelSpec, Mainloop, Pattern};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One accepted spec per tile and engine, the head dimension and stages varying between them.
fn one_spec_per_tile() -> Vec<KernelSpec> {
    let mut chosen: BTreeMap<String, KernelSpec> = BTreeMap::new();
    for arch in [Arch::Sm80, Arch::Sm90a] {
        for &pattern in Pattern::ALL {
            for &mainloop in Mainloop::ALL {
                for &block_m in BLOCK_MS {
                    for &block_n in BLOCK_NS {
                        for &warps in WARPS {
                            let key = format!("{arch} {pattern} {mainloop} {block_m}x{block_n} w{warps}");
                            let turn = chosen.len();
                            let accepted = (0..HEAD_DIMS.len() * STAGES.len())
                                .map(|i| {
                                    let i = i + turn;
                                    let head_dim = HEAD_DIMS[i % HEAD_DIMS.len()];
                                    let stages = STAGES[(i / HEAD_DIMS.len()) % STAGES.len()];
                                    KernelSpec {
                                        pattern,
                                        dtype: DType::Bf16,
                                        head_dim,
                                        block_m,
                                        block_n,
                                        warps,
                                        stages,
                                        arch,
                                        mainloop,
                                    }
                                })
                                .find(|spec| spec.validate().is_ok());
                            if let Some(spec) = accepted {
                                chosen.insert(key, spec);
                            }
                        }
                    }
                }
            }
        }
    }
    chosen.into_values().collect()
}

#[test]
fn one_spec_of_every_accepted_tile_and_engine_compiles() {
    let specs = one_spec_per_tile();
    // Both targets, every pattern and every engine are among them.
    for arch in [Arch::Sm80, Arch::Sm90a] {
        for &pattern in Pattern::ALL {
            assert!(specs.iter().any(|s| (s.arch, s.pattern) == (arch, pattern)), "{arch} {pattern}: none accepted");
        }
    }
    for &mainloop in Mainloop::ALL {
        assert!(specs.iter().any(|s| s.mainloop == mainloop), "{mainloop}: none accepted");
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let cache = minf_runtime::jit::KernelCache::at(dir.path().to_path_buf());
    let failures = Mutex::new(Vec::new());
    let next = Mutex::new(specs.iter());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let Some(spec) = next.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
                let outcome = render(spec).map_err(|e| e.to_string()).and_then(|rendered| {
                    let compiled = cache.get_or_compile(&rendered).map_err(|e| e.to_string())?;
                    if compiled.is_ptx {
                        return Err("PTX instead of a CUBIN".to_string());
                    }
                    match compiled.performance_warnings.first() {
                        Some(warning) => Err(warning.clone()),
                        None => Ok(()),
                    }
                });
                if let Err(error) = outcome {
                    failures.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{spec:?}: {error}"));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(
        failures.is_empty(),
        "{} of {} accepted specs do not compile:\n{}",
        failures.len(),
        specs.len(),
        failures.join("\n")
    );
}
