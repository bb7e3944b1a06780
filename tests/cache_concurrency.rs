//! The `minf` binary against real caches: concurrent warming, re-warming, and its diagnostics.
//! NVRTC must be installed (`pip install nvidia-cuda-nvrtc==13.0.88`); no GPU is needed.

use minf_codegen::{Arch, DType, IndexKernel, IndexKernelSpec, KernelSpec, Pattern};
use minf_runtime::jit::EntryMeta;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::text;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `minf ARGS` on the cache at `cache`.
fn minf(cache: &Path, args: &[&str]) -> Command {
    let mut command = common::minf(args);
    command.env("MINF_CACHE_DIR", cache);
    command
}

/// The `N compiled, N cached, N failed` counts of a warm run's summary line.
fn counts(output: &Output) -> Result<(usize, usize, usize), String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line =
        stdout.lines().find(|l| l.starts_with("warmed ")).ok_or_else(|| format!("no summary in {}", text(output)))?;
    let number = |word: &str| -> Result<usize, String> {
        let before = line.split(&format!(" {word}")).next().ok_or("summary format")?;
        before.rsplit(' ').next().and_then(|n| n.parse().ok()).ok_or_else(|| format!("no `{word}` count in `{line}`"))
    };
    Ok((number("compiled")?, number("cached")?, number("failed")?))
}

/// Names of the entry directories, and fails on leftover temporary directories.
fn entry_names(root: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut names = Vec::new();
    for item in fs::read_dir(root)? {
        let name = item?.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".tmp-"), "leftover temporary directory {name}");
        if name != "locks" && name != "failed" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Checks an entry's meta.json against its binary, a CUBIN (an ELF image for EM_CUDA).
fn assert_valid_entry(entry: &Path) -> TestResult {
    let meta: EntryMeta = serde_json::from_slice(&fs::read(entry.join("meta.json"))?)?;
    assert!(!meta.is_ptx, "{}: PTX instead of a CUBIN", entry.display());
    let cubin = fs::read(entry.join("kernel.cubin"))?;
    assert!(cubin.len() > 52, "{}: {} bytes is too short for an ELF header", entry.display(), cubin.len());
    assert_eq!(&cubin[..4], b"\x7fELF", "{}", entry.display());
    assert_eq!(u16::from_le_bytes([cubin[18], cubin[19]]), 190, "{}: ELF machine is not CUDA", entry.display());
    assert_eq!(blake3::hash(&cubin).to_hex().as_str(), meta.binary_blake3, "{}", entry.display());
    assert_eq!(entry.file_name().and_then(|n| n.to_str()), Some(meta.key_name.as_str()));
    Ok(())
}

#[test]
fn four_processes_warming_one_empty_cache_compile_each_kernel_once() -> TestResult {
    // One attention kernel plus the index kernels of the architecture.
    let kernels = 1 + IndexKernel::ALL.len();
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("cache");
    let children = (0..4)
        .map(|_| {
            minf(&root, &["warm", "--arch", "sm_80", "--pattern", "dense", "--head-dim", "64", "--dtype", "bf16"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut compiled = 0;
    for child in children {
        let output = child.wait_with_output()?;
        assert!(output.status.success(), "{}", text(&output));
        let (c, cached, failed) = counts(&output)?;
        assert_eq!((c + cached, failed), (kernels, 0), "{}", text(&output));
        compiled += c;
    }
    assert_eq!(compiled, kernels, "exactly one process must compile each kernel");
    let names = entry_names(&root)?;
    assert_eq!(names.len(), kernels, "{names:?}");
    let mut prefixes = vec![KernelSpec::default_for(Pattern::Dense, DType::Bf16, 64, Arch::Sm80).readable_name()];
    prefixes
        .extend(IndexKernel::ALL.iter().map(|&kernel| IndexKernelSpec { kernel, arch: Arch::Sm80 }.readable_name()));
    for prefix in prefixes {
        assert!(names.iter().any(|n| n.starts_with(&format!("{prefix}-"))), "no {prefix} entry in {names:?}");
    }
    for name in &names {
        assert_valid_entry(&root.join(name))?;
    }
    Ok(())
}

/// Also the workspace's check that NVRTC compiles every default kernel (attention and index) for
/// sm_80 and sm_90a to a valid CUBIN.
#[test]
fn second_warm_reports_everything_cached_in_under_a_second() -> TestResult {
    let dir = tempfile::tempdir()?;
    let expected = KernelSpec::default_set(&[Arch::Sm80, Arch::Sm90a]).len() + 2 * IndexKernel::ALL.len();
    let first = minf(dir.path(), &["warm", "--arch", "sm_80,sm_90a"]).output()?;
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(counts(&first)?, (expected, 0, 0), "{}", text(&first));

    let start = Instant::now();
    let second = minf(dir.path(), &["warm", "--arch", "sm_80,sm_90a"]).output()?;
    let elapsed = start.elapsed();
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(counts(&second)?, (0, expected, 0), "{}", text(&second));
    assert!(elapsed < Duration::from_secs(1), "second warm took {elapsed:?}");

    let names = entry_names(dir.path())?;
    assert_eq!(names.len(), expected);
    for name in &names {
        assert_valid_entry(&dir.path().join(name))?;
    }
    let list = minf(dir.path(), &["cache", "list"]).output()?;
    assert!(list.status.success(), "{}", text(&list));
    assert!(String::from_utf8_lossy(&list.stdout).contains(&format!("{expected} entries")), "{}", text(&list));
    // Production after warm-up: JIT disabled, and cached kernels are served even without NVRTC.
    let no_nvrtc = minf(dir.path(), &["warm", "--arch", "sm_80,sm_90a"])
        .env("MINF_DISABLE_JIT", "1")
        .env("MINF_NVRTC", "/nonexistent/libnvrtc.so.13")
        .output()?;
    assert!(no_nvrtc.status.success(), "{}", text(&no_nvrtc));
    assert_eq!(counts(&no_nvrtc)?, (0, expected, 0), "{}", text(&no_nvrtc));
    let missing = minf(dir.path(), &["warm", "--arch", "sm_86", "--head-dim", "64", "--dtype", "bf16"])
        .env("MINF_DISABLE_JIT", "1")
        .env("MINF_NVRTC", "/nonexistent/libnvrtc.so.13")
        .output()?;
    assert!(!missing.status.success(), "{}", text(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("JIT compilation is disabled"), "{}", text(&missing));

    let clear = minf(dir.path(), &["cache", "clear"]).output()?;
    assert!(
        String::from_utf8_lossy(&clear.stdout).contains(&format!("removed {expected} entries")),
        "{}",
        text(&clear)
    );
    assert!(entry_names(dir.path())?.is_empty());
    Ok(())
}

#[test]
fn warm_without_arch_needs_a_gpu() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = minf(dir.path(), &["warm", "--head-dim", "64", "--dtype", "bf16"]).output()?;
    if minf_runtime::device::driver_available() {
        assert!(output.status.success(), "{}", text(&output));
    } else {
        assert!(!output.status.success(), "{}", text(&output));
        assert!(String::from_utf8_lossy(&output.stderr).contains("pass --arch"), "{}", text(&output));
    }
    Ok(())
}

#[test]
fn unknown_names_are_rejected_with_a_suggestion() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output = minf(dir.path(), &["warm", "--arch", "sm_90aa"]).output()?;
    assert!(!output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("did you mean `sm_90a`"), "{}", text(&output));
    Ok(())
}

#[test]
fn doctor_and_status_report_nvrtc_and_the_cache() -> TestResult {
    let dir = tempfile::tempdir()?;
    let doctor = minf(dir.path(), &["doctor"]).output()?;
    assert!(doctor.status.success(), "{}", text(&doctor));
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    for field in ["gpu:", "target arch:", "nvrtc:        13.", "cache dir:"] {
        assert!(stdout.contains(field), "missing `{field}` in {}", text(&doctor));
    }
    let status = minf(dir.path(), &["cache", "status"]).env("MINF_DISABLE_JIT", "1").output()?;
    assert!(status.status.success(), "{}", text(&status));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("entries:      0") && stdout.contains("disabled"), "{}", text(&status));
    Ok(())
}

#[test]
fn a_bad_minf_nvrtc_is_reported_with_the_install_command() -> TestResult {
    let dir = tempfile::tempdir()?;
    let output =
        minf(dir.path(), &["warm", "--arch", "sm_80"]).env("MINF_NVRTC", "/nonexistent/libnvrtc.so.13").output()?;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/libnvrtc.so.13"), "{}", text(&output));
    assert!(stderr.contains("pip install nvidia-cuda-nvrtc==13.0.88"), "{}", text(&output));
    Ok(())
}
