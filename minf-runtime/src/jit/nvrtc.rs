//! Finding, loading and calling NVRTC.
//!
//! cudarc opens NVRTC by bare library names only and panics when none loads, so minf looks for
//! `libnvrtc.so.13` itself (`$MINF_NVRTC`, the system library path, `$CUDA_HOME`/`$CUDA_PATH`,
//! `/usr/local/cuda`, then the `nvidia-cuda-nvrtc` pip wheel), loads it by full path and keeps it
//! loaded for the life of the process. The dynamic loader then resolves cudarc's own
//! `dlopen("libnvrtc.so.13")` to that library by its SONAME.

use super::JitError;
use cudarc::nvrtc::{result, sys};
use minf_codegen::RenderedKernel;
use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// The NVRTC major version cudarc is built for (feature `cuda-13000`).
const MAJOR: i32 = 13;
/// File names of the library, most specific first.
const FILE_NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so"];
/// Where the `nvidia-cuda-nvrtc` wheel puts the library inside `site-packages`.
const WHEEL_LIB_DIR: &str = "nvidia/cu13/lib";
/// The one command that installs NVRTC.
pub const INSTALL_HINT: &str =
    "install it with `pip install nvidia-cuda-nvrtc==13.0.88` (or a CUDA 13 toolkit), or set MINF_NVRTC=/path/to/libnvrtc.so.13";

/// The NVRTC library in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvrtcInfo {
    /// The file that was loaded.
    pub path: PathBuf,
    /// NVRTC's version as (major, minor).
    pub version: (i32, i32),
}

/// The loaded libraries, kept for the life of the process.
struct Loaded {
    info: NvrtcInfo,
    _library: libloading::Library,
    _builtins: Option<libloading::Library>,
}

/// Finds and loads NVRTC once per process; returns its path and version.
pub fn nvrtc_info() -> Result<NvrtcInfo, JitError> {
    static NVRTC: OnceLock<Result<Loaded, JitError>> = OnceLock::new();
    match NVRTC.get_or_init(load) {
        Ok(loaded) => Ok(loaded.info.clone()),
        Err(e) => Err(e.clone()),
    }
}

fn load() -> Result<Loaded, JitError> {
    let (path, library) = find()?;
    // cudarc opens the library again by bare name; check it finds ours rather than panicking later.
    // SAFETY: only dlopens NVRTC by its known names.
    if !unsafe { sys::is_culib_present() } {
        return Err(JitError::NvrtcLoad {
            path,
            reason: format!(
                "it loaded, but not under the name libnvrtc.so.{MAJOR} (its SONAME); minf needs NVRTC {MAJOR}.x"
            ),
        });
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is loaded; both pointers are valid for writes.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| JitError::Nvrtc {
        call: "nvrtcVersion",
        kernel: None,
        error: format!("{e:?}"),
    })?;
    if major != MAJOR {
        return Err(JitError::NvrtcLoad {
            path,
            reason: format!("it is NVRTC {major}.{minor}; minf needs NVRTC {MAJOR}.x"),
        });
    }
    let builtins = load_builtins(&path, (major, minor))?;
    Ok(Loaded { info: NvrtcInfo { path, version: (major, minor) }, _library: library, _builtins: builtins })
}

/// NVRTC opens `libnvrtc-builtins.so.<major>.<minor>` by bare name when it compiles; preload the one
/// beside `nvrtc` so that name resolves without `LD_LIBRARY_PATH`. `None` when it is not beside it
/// but the system library path has it.
fn load_builtins(nvrtc: &Path, (major, minor): (i32, i32)) -> Result<Option<libloading::Library>, JitError> {
    let name = format!("libnvrtc-builtins.so.{major}.{minor}");
    let dirs = [
        nvrtc.parent().map(Path::to_path_buf),
        nvrtc.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf)),
    ];
    if let Some(beside) = dirs.into_iter().flatten().map(|dir| dir.join(&name)).find(|p| p.is_file()) {
        // SAFETY: as for NVRTC itself.
        return match unsafe { libloading::Library::new(&beside) } {
            Ok(library) => Ok(Some(library)),
            Err(e) => Err(JitError::NvrtcLoad {
                path: beside,
                reason: format!("NVRTC's builtins library does not load: {e}"),
            }),
        };
    }
    // SAFETY: as above.
    match unsafe { libloading::Library::new(&name) } {
        Ok(_) => Ok(None),
        Err(_) => Err(JitError::NvrtcLoad {
            path: nvrtc.to_path_buf(),
            reason: format!("{name}, which NVRTC needs to compile, is neither beside it nor on the library path"),
        }),
    }
}

/// Tries each place in turn; the error lists everything searched.
fn find() -> Result<(PathBuf, libloading::Library), JitError> {
    if let Some(explicit) = std::env::var_os("MINF_NVRTC").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(explicit);
        // SAFETY: loading NVRTC runs no user code beyond its initialisers.
        return match unsafe { libloading::Library::new(&path) } {
            Ok(library) => Ok((path, library)),
            Err(e) => {
                Err(JitError::NvrtcLoad { path, reason: format!("MINF_NVRTC points here but it does not load: {e}") })
            }
        };
    }
    let mut searched = Vec::new();
    for name in FILE_NAMES {
        searched.push(format!("{name} (system library path)"));
        // SAFETY: as above.
        if let Ok(library) = unsafe { libloading::Library::new(*name) } {
            return Ok((mapped_path().unwrap_or_else(|| PathBuf::from(name)), library));
        }
    }
    let candidates = candidate_dirs();
    let mut tried_dirs = Vec::new();
    for dir in candidates.into_iter().chain(std::iter::once_with(python_site_dirs).flatten()) {
        if tried_dirs.contains(&dir) {
            continue;
        }
        for name in FILE_NAMES {
            let path = dir.join(name);
            searched.push(path.display().to_string());
            if path.is_file() {
                // SAFETY: as above.
                if let Ok(library) = unsafe { libloading::Library::new(&path) } {
                    return Ok((path, library));
                }
            }
        }
        tried_dirs.push(dir);
    }
    Err(JitError::NvrtcNotFound { searched })
}

/// The file a library loaded by bare name came from, read from `/proc/self/maps`.
fn mapped_path() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| Path::new(path).file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with("libnvrtc.so")))
        .map(PathBuf::from)
}

/// Toolkit directories and common `site-packages` locations, in search order (without running Python).
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let root = PathBuf::from(root);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    let mut site = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            site.extend(python_dirs(&Path::new(&prefix).join("lib"), &["site-packages"]));
        }
    }
    if let Some(home) = dirs::home_dir() {
        site.extend(python_dirs(&home.join(".local/lib"), &["site-packages"]));
        if let Ok(versions) = std::fs::read_dir(home.join(".pyenv/versions")) {
            let mut versions: Vec<PathBuf> = versions.filter_map(|e| e.ok().map(|e| e.path())).collect();
            versions.sort();
            for version in versions.iter().rev() {
                site.extend(python_dirs(&version.join("lib"), &["site-packages"]));
            }
        }
    }
    site.extend(python_dirs(Path::new("/usr/local/lib"), &["dist-packages", "site-packages"]));
    site.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    dirs.extend(site.into_iter().map(|s| s.join(WHEEL_LIB_DIR)));
    dirs
}

/// `<base>/python3*/<leaf>` for each leaf, newest Python first.
fn python_dirs(base: &Path, leaves: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
    let mut pythons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons.iter().rev().flat_map(|p| leaves.iter().map(move |leaf| p.join(leaf))).collect()
}

/// The wheel directories of the `python3` on `PATH` (slow: only asked when nothing else was found).
fn python_site_dirs() -> Vec<PathBuf> {
    let script = "import site,sys; print('\\n'.join([site.getusersitepackages()] + site.getsitepackages() + sys.path))";
    let Ok(output) = Command::new("python3").args(["-c", script]).output() else { return Vec::new() };
    if !output.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.ends_with("site-packages") || line.ends_with("dist-packages"))
        .map(|line| Path::new(line).join(WHEEL_LIB_DIR))
        .collect()
}

/// A compiled kernel image.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// CUBIN bytes, or NUL-terminated PTX when `is_ptx`.
    pub(crate) image: Vec<u8>,
    /// Whether `image` is PTX.
    pub(crate) is_ptx: bool,
    /// ptxas's performance warnings in the compile log ([`performance_warnings`]).
    pub(crate) performance_warnings: Vec<String>,
}

/// The lines of an NVRTC log in which ptxas reports a performance loss, such as `wgmma`
/// instructions it serialised (C7514, C7515, C7518): the kernel is correct but slower than its
/// source intends.
pub(crate) fn performance_warnings(log: &str) -> Vec<String> {
    log.lines().filter(|line| line.contains("Potential Performance Loss")).map(|line| line.trim().to_string()).collect()
}

/// An NVRTC program, destroyed on drop.
struct Program {
    handle: sys::nvrtcProgram,
    name: String,
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `create_program` and is destroyed only here.
        if let Err(e) = unsafe { result::destroy_program(self.handle) } {
            tracing::warn!(kernel = %self.name, error = ?e, "nvrtcDestroyProgram failed");
        }
    }
}

/// Compiles `kernel` with its options: CUBIN for the exact architecture, PTX if CUBIN is unavailable.
/// A compile error comes back as [`JitError::Compile`] without a saved source path.
pub(crate) fn compile(kernel: &RenderedKernel, name: &str) -> Result<Compiled, JitError> {
    nvrtc_info()?;
    let nul = |what: &str| JitError::InvalidInput {
        kernel: name.to_string(),
        reason: format!("the {what} contains a NUL byte, which NVRTC cannot take"),
    };
    let source = CString::new(kernel.source.as_bytes()).map_err(|_| nul("rendered source"))?;
    if kernel.options.iter().any(|o| o.contains('\0')) {
        return Err(nul("option list"));
    }
    let file_name = CString::new(format!("{name}.cu")).map_err(|_| nul("kernel name"))?;
    let call = |call: &'static str| {
        let kernel = Some(name.to_string());
        move |e: result::NvrtcError| JitError::Nvrtc { call, kernel, error: format!("{e:?}") }
    };
    let handle = result::create_program(&source, Some(&file_name)).map_err(call("nvrtcCreateProgram"))?;
    let program = Program { handle, name: name.to_string() };
    let start = Instant::now();
    // SAFETY: `program` is live until dropped at the end of this function.
    let compiled = unsafe { result::compile_program(program.handle, &kernel.options) };
    if let Err(e) = compiled {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(program.handle) }.map_err(call("nvrtcGetProgramLog"))?;
        let log = c_chars_to_string(&log);
        if e.0 != sys::nvrtcResult::NVRTC_ERROR_COMPILATION {
            return Err(JitError::Nvrtc {
                call: "nvrtcCompileProgram",
                kernel: Some(name.to_string()),
                error: format!("{e:?}: {log}"),
            });
        }
        return Err(JitError::Compile { kernel: name.to_string(), log, source_path: None });
    }
    tracing::debug!(kernel = %name, seconds = start.elapsed().as_secs_f64(), "nvrtcCompileProgram done");
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program.handle) }.map_err(call("nvrtcGetProgramLog"))?;
    let performance_warnings = performance_warnings(&c_chars_to_string(&log));
    // SAFETY: as above.
    match unsafe { cubin(program.handle) } {
        Ok(image) => Ok(Compiled { image, is_ptx: false, performance_warnings }),
        Err(cubin_error) => {
            tracing::warn!(kernel = %name, error = ?cubin_error, "no CUBIN from NVRTC; falling back to PTX");
            // SAFETY: as above.
            let ptx = unsafe { result::get_ptx(program.handle) }.map_err(call("nvrtcGetPTX"))?;
            Ok(Compiled { image: ptx.iter().map(|&c| c as u8).collect(), is_ptx: true, performance_warnings })
        }
    }
}

/// The CUBIN of a compiled program; an error when NVRTC produced none (a virtual architecture).
///
/// # Safety
/// `handle` must be a live, compiled program.
unsafe fn cubin(handle: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(handle, &mut size).result()?;
    if size == 0 {
        return Err(result::NvrtcError(sys::nvrtcResult::NVRTC_ERROR_INVALID_INPUT));
    }
    let mut image = vec![0u8; size];
    sys::nvrtcGetCUBIN(handle, image.as_mut_ptr().cast::<c_char>()).result()?;
    Ok(image)
}

/// NVRTC's NUL-terminated log as text.
fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_dirs_lists_newest_first() -> Result<(), Box<dyn std::error::Error>> {
        let base = tempfile::tempdir()?;
        for dir in ["python3.10", "python3.12", "perl5"] {
            std::fs::create_dir(base.path().join(dir))?;
        }
        let dirs = python_dirs(base.path(), &["site-packages"]);
        assert_eq!(
            dirs,
            vec![base.path().join("python3.12/site-packages"), base.path().join("python3.10/site-packages")]
        );
        Ok(())
    }

    #[test]
    fn performance_warnings_are_the_lines_that_report_a_loss() {
        let log = "k.cu(317): warning #177-D: variable \"X\" was declared but never referenced\n\
                   ptxas info    : (C7514) Potential Performance Loss: wgmma.mma_async instructions are serialized \
                   due to non wgmma instructions reading accumulator registers of a wgmma in the function 'k'\n\
                   ptxas info    : Used 168 registers\n";
        let warnings = performance_warnings(log);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("ptxas info    : (C7514) Potential Performance Loss"), "{warnings:?}");
        assert!(performance_warnings("ptxas info    : Used 168 registers").is_empty());
    }

    #[test]
    fn logs_stop_at_nul() {
        let chars: Vec<c_char> = b"error: x\n\0junk".iter().map(|&b| b as c_char).collect();
        assert_eq!(c_chars_to_string(&chars), "error: x");
    }
}
