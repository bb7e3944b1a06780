//! The `minf` binary where a new user meets it: output into a pipe that closes early, log lines
//! into a file, `warm` into a cache it cannot write, `cache clear`, option checks, and `doctor`'s
//! advice. No GPU is needed; nothing here compiles a kernel.

mod common;

use common::{minf, text};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The config shipped in `configs/`.
fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json")
}

/// Runs `minf ARGS` with its standard output a pipe whose reader is gone before it writes (as
/// `minf ARGS | head -0` does), and returns how it ended.
fn into_closed_pipe(args: &[&str], cache: &Path) -> Result<Output, std::io::Error> {
    let mut child = minf(args)
        .env("MINF_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    child.wait_with_output()
}

#[test]
fn commands_piped_into_a_reader_that_stops_early_exit_quietly() -> TestResult {
    let cache = tempfile::tempdir()?;
    let config = shipped_config();
    let config = config.to_str().ok_or("path")?;
    let commands: [&[&str]; 7] = [
        &["doctor"],
        &["cache", "list"],
        &["cache", "status"],
        &["config", "show", config],
        &["bench", "--list"],
        &["bench", "--list", "--seqs", "32K", "--patterns", &format!("config:{config}")],
        &["--help"],
    ];
    for args in commands {
        let output = into_closed_pipe(args, cache.path())?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "minf {args:?}: {}", text(&output));
        assert_eq!(output.status.code(), Some(0), "minf {args:?}: {}", text(&output));
    }
    Ok(())
}

#[test]
fn log_lines_into_a_pipe_have_no_colour_codes() -> TestResult {
    // With JIT disabled and no NVRTC, each kernel logs a debug line and `warm` fails at once.
    let cache = tempfile::tempdir()?;
    let output = minf(&["warm", "--arch", "sm_80", "--pattern", "dense", "--dtype", "bf16", "--head-dim", "64"])
        .env("MINF_CACHE_DIR", cache.path())
        .env("MINF_DISABLE_JIT", "1")
        .env("MINF_NVRTC", cache.path().join("no-libnvrtc.so"))
        .env("RUST_LOG", "debug")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DEBUG") && stderr.contains("no cached entry"), "{}", text(&output));
    assert!(!stderr.contains('\x1b'), "colour codes in a pipe: {}", text(&output));
    Ok(())
}

/// `minf warm` of one small kernel set into `cache_dir`.
fn warm_into(cache_dir: &Path) -> Result<Output, std::io::Error> {
    minf(&["warm", "--arch", "sm_80", "--pattern", "dense", "--dtype", "bf16", "--head-dim", "64"])
        .env("MINF_CACHE_DIR", cache_dir)
        .output()
}

/// `warm` into a cache it cannot write fails with one error saying nothing was saved.
fn assert_warm_fails_saving_nothing(output: &Output, cache_dir: &Path) {
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{}", text(output));
    assert!(stderr.contains("nothing was compiled or saved"), "{}", text(output));
    assert!(stderr.contains(&cache_dir.display().to_string()), "the error names the cache: {}", text(output));
    assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one error line: {}", text(output));
    assert!(!stderr.contains("corrupt") && !stdout.contains("warmed"), "{}", text(output));
}

#[test]
fn warm_into_a_regular_file_fails_and_saves_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cache");
    fs::write(&file, b"a file, not a directory")?;
    for cache_dir in [file.clone(), file.join("sub")] {
        let output = warm_into(&cache_dir)?;
        assert_warm_fails_saving_nothing(&output, &cache_dir);
    }
    assert_eq!(fs::read(&file)?, b"a file, not a directory");
    Ok(())
}

#[test]
fn warm_into_a_read_only_directory_fails_and_saves_nothing() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let read_only = dir.path().join("read-only");
    fs::create_dir(&read_only)?;
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o555))?;
    // Permissions do not stop root (the CI runs as root): there, a directory of sysfs, in which
    // not even root can create anything, stands in for a read-only one.
    let root_ignores_permissions = fs::create_dir(read_only.join("probe")).is_ok();
    let cache_dir = if root_ignores_permissions { PathBuf::from("/sys") } else { read_only.clone() };
    if root_ignores_permissions && !Path::new("/sys/kernel").is_dir() {
        eprintln!("skipped: running as root and no sysfs at /sys to stand in for a read-only directory");
        return Ok(());
    }
    let output = warm_into(&cache_dir)?;
    assert_warm_fails_saving_nothing(&output, &cache_dir);
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[test]
fn cache_clear_removes_entries_and_lock_files_only() -> TestResult {
    let cache = tempfile::tempdir()?;
    let entry = cache.path().join("dense-bf16-d64-m128n128-sm80-0123456789abcdef");
    fs::create_dir(&entry)?;
    fs::write(entry.join("meta.json"), b"{}")?;
    // A cache directory set to a folder other programs use: their folders are not entries.
    let other = cache.path().join("my_project").join("src");
    fs::create_dir_all(&other)?;
    fs::write(other.join("main.rs"), b"fn main() {}")?;
    let listed = minf(&["cache", "list"]).env("MINF_CACHE_DIR", cache.path()).output()?;
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("my_project"), "{}", text(&listed));
    fs::create_dir(cache.path().join("locks"))?;
    for name in ["dense-bf16-d64-m128n128-sm80-0123456789abcdef.lock", "vs_convert-sm80-0123456789abcdef.lock"] {
        fs::write(cache.path().join("locks").join(name), b"")?;
    }
    let output = minf(&["cache", "clear"]).env("MINF_CACHE_DIR", cache.path()).output()?;
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("removed 1 entries"), "{}", text(&output));
    assert!(!entry.exists(), "{}", text(&output));
    assert!(other.join("main.rs").exists(), "{}", text(&output));
    let locks: Vec<_> = fs::read_dir(cache.path().join("locks"))?.collect::<Result<_, _>>()?;
    assert!(locks.is_empty(), "lock files left behind: {locks:?}");
    Ok(())
}

#[test]
fn doctor_fails_on_an_invalid_jit_setting_and_says_so() -> TestResult {
    let output = minf(&["doctor"]).env("MINF_DISABLE_JIT", "bad").output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(stdout.contains("cache:        unusable: invalid MINF_DISABLE_JIT=bad"), "{}", text(&output));
    // A cache directory that is a file.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cache");
    fs::write(&file, b"not a directory")?;
    let output = minf(&["doctor"]).env("MINF_CACHE_DIR", &file).output()?;
    assert!(!output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("unreadable"), "{}", text(&output));
    Ok(())
}

#[test]
fn zero_jobs_is_refused() -> TestResult {
    let output = minf(&["warm", "--arch", "sm_80", "--jobs", "0"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(stderr.contains("--jobs") && stderr.contains("at least 1"), "{}", text(&output));
    Ok(())
}

#[test]
fn doctor_gives_its_own_advice_without_a_gpu() -> TestResult {
    if minf::device::probe(0).is_ok() {
        eprintln!("skipped: doctor_gives_its_own_advice_without_a_gpu checks a machine without a GPU");
        return Ok(());
    }
    let cache = tempfile::tempdir()?;
    let output = minf(&["doctor"]).env("MINF_CACHE_DIR", cache.path()).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", text(&output));
    assert!(stdout.contains("gpu:          none: no CUDA driver found"), "{}", text(&output));
    assert!(stdout.contains("`minf warm --arch sm_80,sm_90a` still compiles every kernel"), "{}", text(&output));
    assert!(!stdout.contains("minf doctor"), "doctor sends the user to doctor: {}", text(&output));
    assert_eq!(stdout.matches("minf warm").count(), 1, "the advice once: {}", text(&output));
    Ok(())
}
