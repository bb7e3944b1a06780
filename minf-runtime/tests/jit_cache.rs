//! The JIT and its cache on a CPU-only machine: NVRTC must be installed (CI installs it with
//! `pip install nvidia-cuda-nvrtc==13.0.88`); these tests fail, not skip, without it.

use minf_codegen::{render_index, Arch, IndexKernel, IndexKernelSpec, RenderedKernel};
use minf_runtime::jit::{nvrtc_info, CacheOutcome, JitError, KernelCache};
use std::fs;
use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn require_nvrtc() {
    if let Err(e) = nvrtc_info() {
        panic!("these tests need NVRTC: {e}");
    }
}

/// A rendered kernel whose source carries `tag`, so each test has its own cache key: the per-head
/// tile choice, the quickest of minf's kernels to compile (the cache treats every kernel alike;
/// `tests/cache_concurrency.rs` compiles every default kernel through `minf warm`).
fn kernel(tag: &str) -> RenderedKernel {
    require_nvrtc();
    let spec = IndexKernelSpec { kernel: IndexKernel::TileChoice, arch: Arch::Sm80 };
    let mut kernel = render_index(&spec).unwrap_or_else(|e| panic!("rendering {spec:?}: {e}"));
    kernel.source.push_str(&format!("\n// test {tag}\n"));
    kernel
}

fn assert_cubin(image: &[u8]) {
    assert!(image.len() > 52, "CUBIN of {} bytes is too short for an ELF header", image.len());
    assert_eq!(&image[..4], b"\x7fELF", "CUBIN does not start with the ELF magic");
    // e_machine 190 is EM_CUDA.
    assert_eq!(u16::from_le_bytes([image[18], image[19]]), 190, "ELF machine is not CUDA");
}

fn compiled(outcome: CacheOutcome) -> bool {
    matches!(outcome, CacheOutcome::Compiled { seconds } if seconds >= 0.0)
}

#[test]
fn miss_then_memory_hit_then_disk_hit_then_clear() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = kernel("outcomes");
    let cache = KernelCache::at(dir.path().to_path_buf());
    let first = cache.get_or_compile(&kernel)?;
    assert!(compiled(first.outcome), "{:?}", first.outcome);
    assert!(!first.is_ptx);
    assert_cubin(&first.image);
    let second = cache.get_or_compile(&kernel)?;
    assert_eq!(second.outcome, CacheOutcome::MemoryHit);
    assert_eq!(second.image, first.image);

    let other_process = KernelCache::at(dir.path().to_path_buf());
    let third = other_process.get_or_compile(&kernel)?;
    assert_eq!(third.outcome, CacheOutcome::DiskHit);
    assert_eq!(third.image, first.image);
    assert_eq!(third.key, first.key);

    let entries = cache.entries()?;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, first.key.name);
    let meta = entries[0].meta.as_ref().ok_or("entry has no meta")?;
    assert_eq!(meta.key_hash, first.key.hash);
    assert_eq!(meta.binary_blake3, blake3::hash(&first.image).to_hex().as_str());
    assert_eq!(meta.spec, kernel.kernel);
    assert_eq!(fs::read_to_string(dir.path().join(&first.key.name).join("kernel.cu"))?, kernel.source);
    assert!(cache.total_size()? >= first.image.len() as u64);

    assert_eq!(cache.clear()?, 1);
    assert!(cache.entries()?.is_empty());
    assert!(compiled(cache.get_or_compile(&kernel)?.outcome), "clear must empty the memory cache too");
    Ok(())
}

/// Damages the entry with `damage`, then checks a fresh cache rebuilds a valid one.
fn rebuilt_after(tag: &str, damage: impl Fn(&Path) -> std::io::Result<()>) -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = kernel(tag);
    let first = KernelCache::at(dir.path().to_path_buf()).get_or_compile(&kernel)?;
    let entry = dir.path().join(&first.key.name);
    damage(&entry)?;
    let cache = KernelCache::at(dir.path().to_path_buf());
    let again = cache.get_or_compile(&kernel)?;
    assert!(compiled(again.outcome), "a damaged entry must be rebuilt, got {:?}", again.outcome);
    assert_eq!(again.image, first.image);
    let fresh = KernelCache::at(dir.path().to_path_buf()).get_or_compile(&kernel)?;
    assert_eq!(fresh.outcome, CacheOutcome::DiskHit, "the rebuilt entry must be valid");
    assert_eq!(fs::read(entry.join("kernel.cubin"))?, *first.image);
    let leftovers: Vec<_> = fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary directories left behind: {leftovers:?}");
    Ok(())
}

#[test]
fn truncated_cubin_is_rebuilt() -> TestResult {
    rebuilt_after("truncated", |entry| {
        let path = entry.join("kernel.cubin");
        let bytes = fs::read(&path)?;
        fs::write(&path, &bytes[..bytes.len() / 2])
    })
}

#[test]
fn garbage_meta_is_rebuilt() -> TestResult {
    rebuilt_after("garbage-meta", |entry| fs::write(entry.join("meta.json"), b"{ not json"))
}

#[test]
fn missing_meta_is_rebuilt() -> TestResult {
    rebuilt_after("missing-meta", |entry| fs::remove_file(entry.join("meta.json")))
}

#[test]
fn unwritable_cache_degrades_to_memory_only() -> TestResult {
    // Tests run as root, so permissions do not stop writes: a root under a regular file does.
    let file = tempfile::NamedTempFile::new()?;
    let cache = KernelCache::at(file.path().join("cache"));
    let kernel = kernel("unwritable");
    let first = cache.get_or_compile(&kernel)?;
    assert!(compiled(first.outcome), "{:?}", first.outcome);
    assert_cubin(&first.image);
    assert!(cache.is_memory_only());
    assert_eq!(cache.get_or_compile(&kernel)?.outcome, CacheOutcome::MemoryHit);
    let other = cache.get_or_compile(&self::kernel("unwritable-2"))?;
    assert!(compiled(other.outcome), "{:?}", other.outcome);
    assert!(file.path().is_file(), "the blocking file must be untouched");
    Ok(())
}

#[test]
fn disabled_jit_turns_a_miss_into_an_error_but_serves_hits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = kernel("disabled");
    let disabled = KernelCache::at(dir.path().to_path_buf()).with_jit_disabled(true);
    assert!(disabled.jit_disabled());
    match disabled.get_or_compile(&kernel) {
        Err(JitError::JitDisabled { name, cache_dir }) => {
            assert_eq!(name, kernel.cache_key(nvrtc_info()?.version).name);
            assert_eq!(cache_dir, dir.path());
        }
        other => panic!("expected JitDisabled, got {other:?}"),
    }
    assert!(fs::read_dir(dir.path()).map_or(true, |mut d| d.next().is_none()), "a disabled miss must write nothing");
    KernelCache::at(dir.path().to_path_buf()).get_or_compile(&kernel)?;
    assert_eq!(disabled.get_or_compile(&kernel)?.outcome, CacheOutcome::DiskHit);
    Ok(())
}

#[test]
fn compile_error_has_the_log_and_a_saved_source() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut kernel = kernel("broken");
    kernel.source = "extern \"C\" __global__ void broken(int *x) { x[0] = undeclared_name; }\n".to_string();
    let cache = KernelCache::at(dir.path().to_path_buf());
    match cache.get_or_compile(&kernel) {
        Err(JitError::Compile { kernel: name, log, source_path }) => {
            assert!(name.starts_with(&format!("{}-", kernel.readable_name())), "{name}");
            assert!(log.contains("undeclared_name"), "log: {log}");
            let path = source_path.ok_or("the failing source was not saved")?;
            assert!(path.starts_with(dir.path().join("failed")), "{}", path.display());
            assert_eq!(fs::read_to_string(&path)?, kernel.source);
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    assert!(cache.entries()?.is_empty(), "a failed compile must not publish an entry");
    Ok(())
}

#[test]
fn separate_caches_on_one_dir_compile_a_kernel_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = kernel("threads");
    let outcomes = std::thread::scope(|scope| -> Result<Vec<CacheOutcome>, &str> {
        let handles: Vec<_> =
            (0..4).map(|_| scope.spawn(|| KernelCache::at(dir.path().to_path_buf()).get_or_compile(&kernel))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "thread panicked")?.map(|k| k.outcome).map_err(|_| "failed"))
            .collect()
    })?;
    assert_eq!(outcomes.iter().filter(|o| compiled(**o)).count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::DiskHit).count(), 3, "{outcomes:?}");
    Ok(())
}

#[test]
fn nvrtc_info_reports_version_13_and_an_existing_file() {
    match nvrtc_info() {
        Ok(info) => {
            assert_eq!(info.version.0, 13, "{info:?}");
            assert!(info.path.exists(), "{}", info.path.display());
        }
        Err(e) => panic!("these tests need NVRTC: {e}"),
    }
}

#[test]
fn not_found_error_lists_paths_and_the_install_command() {
    let e = JitError::NvrtcNotFound { searched: vec!["/a/libnvrtc.so.13".into(), "/b/libnvrtc.so".into()] };
    let text = e.to_string();
    assert!(text.contains("/a/libnvrtc.so.13\n  /b/libnvrtc.so"), "{text}");
    assert!(text.contains("pip install nvidia-cuda-nvrtc==13.0.88"), "{text}");
    assert!(text.contains("MINF_NVRTC"), "{text}");
}
