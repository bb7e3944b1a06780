//! The native part of minf's Python package (`minf._minf`): `doctor`, `warm`, the `MinfError`
//! exception and the tensor entry points (module `tensors`: `attention_into` and `Prefill`). The
//! Python side (`python/minf/`) wraps them; the logic is the runtime's
//! ([`minf_runtime::doctor`], [`minf_runtime::warm`], [`minf_runtime::foreign`]), shared with the
//! `minf` command line and the Rust API.

use minf_runtime::codegen::spec::HEAD_DIMS;
use minf_runtime::codegen::{Arch, DType, KernelSpec, Pattern};
use minf_runtime::config::{known_model, PatternConfig};
use minf_runtime::doctor::{current_gpu, DoctorReport};
use minf_runtime::jit::KernelCache;
use minf_runtime::warm::{check_ready, config_kernels, default_kernels, warm_kernels, with_index_kernels, WarmError};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::path::PathBuf;
use std::str::FromStr;

// Declared as `minf.MinfError`, where the package exports it, so that pickle finds the class (an
// error crosses process boundaries with multiprocessing).
pyo3::create_exception!(
    minf,
    MinfError,
    PyRuntimeError,
    "An error from minf's runtime (NVRTC, the kernel cache, the GPU); the message is the runtime's."
);

mod tensors;

fn minf_error(error: impl std::fmt::Display) -> PyErr {
    MinfError::new_err(error.to_string())
}

/// A config file that cannot be read, as the runtime reports it (a [`MinfError`]): checked before
/// a file name that names no known model asks for the model's shape.
fn check_readable(path: &std::path::Path) -> PyResult<()> {
    minf_runtime::config::check_readable(path).map_err(minf_error)
}

/// `value` as a list of strings: one string, or a list or tuple of strings.
fn string_list(name: &str, value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if value.is_instance_of::<PyString>() {
        return Ok(vec![value.extract::<String>()?]);
    }
    value
        .extract::<Vec<String>>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a string or a list of strings ({what}), or None")))
}

/// Parses each name of `name`'s list as one of `allowed`.
fn parse_names<T: FromStr + Copy>(
    name: &str,
    value: Option<&Bound<'_, PyAny>>,
    allowed: &[T],
    show: fn(T) -> &'static str,
) -> PyResult<Vec<T>> {
    let names: Vec<&str> = allowed.iter().map(|&t| show(t)).collect();
    let what = names.join(", ");
    let Some(value) = value.filter(|v| !v.is_none()) else { return Ok(Vec::new()) };
    let texts = string_list(name, value, &what)?;
    if texts.is_empty() {
        return Err(PyValueError::new_err(format!("{name} is empty: pass None for all, or some of {what}")));
    }
    texts
        .iter()
        .map(|text| {
            T::from_str(text).map_err(|_| PyValueError::new_err(format!("invalid {name} {text:?}: allowed {what}")))
        })
        .collect()
}

fn parse_head_dims(value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<u32>> {
    let allowed = format!("{HEAD_DIMS:?}");
    let Some(value) = value.filter(|v| !v.is_none()) else { return Ok(Vec::new()) };
    let not_integers =
        || PyTypeError::new_err(format!("head_dims must be an integer or a list of integers ({allowed}), or None"));
    // An integer is anything with `__index__` (Python ints and NumPy's integer scalars).
    let is_integer = |item: &Bound<'_, PyAny>| item.hasattr("__index__").unwrap_or(false);
    // A sequence (a list, a tuple, a NumPy array; never a str) is checked first: a NumPy array
    // has `__index__`.
    let items: Vec<Bound<'_, PyAny>> = match value.extract() {
        Ok(items) => items,
        _ if is_integer(value) => vec![value.clone()],
        _ => return Err(not_integers()),
    };
    if items.is_empty() {
        return Err(PyValueError::new_err(format!("head_dims is empty: pass None for all, or some of {allowed}")));
    }
    items
        .iter()
        .map(|item| {
            if !is_integer(item) {
                return Err(not_integers());
            }
            // An integer past u32 (2**70 included) is as unsupported as any other value.
            item.extract::<u32>()
                .ok()
                .filter(|d| HEAD_DIMS.contains(d))
                .ok_or_else(|| PyValueError::new_err(format!("invalid head_dims {item}: allowed {allowed}")))
        })
        .collect()
}

/// The machine report behind `minf.doctor()`: a dict, with the `minf doctor` text under `"text"`.
#[pyfunction]
fn doctor(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let report = py.detach(DoctorReport::probe);
    let dict = PyDict::new(py);
    match &report.gpu {
        Ok(gpu) => {
            let info = PyDict::new(py);
            info.set_item("name", &gpu.name)?;
            info.set_item("ordinal", gpu.ordinal)?;
            info.set_item("compute_capability", gpu.compute_capability)?;
            info.set_item("driver_version", gpu.driver_version)?;
            dict.set_item("gpu", info)?;
            dict.set_item("gpu_error", py.None())?;
        }
        Err(e) => {
            dict.set_item("gpu", py.None())?;
            dict.set_item("gpu_error", e)?;
        }
    }
    let arch = report.gpu.as_ref().ok().and_then(|gpu| gpu.arch).map(Arch::as_str);
    dict.set_item("target_arch", arch)?;
    dict.set_item("target", report.target())?;
    match &report.nvrtc {
        Ok(info) => {
            dict.set_item("nvrtc_path", info.path.to_string_lossy())?;
            dict.set_item("nvrtc_version", info.version)?;
            dict.set_item("nvrtc_error", py.None())?;
        }
        Err(e) => {
            dict.set_item("nvrtc_path", py.None())?;
            dict.set_item("nvrtc_version", py.None())?;
            dict.set_item("nvrtc_error", e)?;
        }
    }
    match &report.cache {
        Ok(cache) => {
            dict.set_item("cache_dir", cache.dir.to_string_lossy())?;
            dict.set_item("cache_size_bytes", cache.size.as_ref().ok())?;
            dict.set_item("jit_enabled", cache.jit_enabled)?;
            dict.set_item("cache_error", py.None())?;
        }
        Err(e) => {
            dict.set_item("cache_dir", py.None())?;
            dict.set_item("cache_size_bytes", py.None())?;
            dict.set_item("jit_enabled", py.None())?;
            dict.set_item("cache_error", e)?;
        }
    }
    dict.set_item("text", report.to_string())?;
    Ok(dict)
}

/// Compiles kernels into the disk cache, like `minf warm`; returns a dict of counts.
#[pyfunction]
#[pyo3(signature = (arch=None, patterns=None, head_dims=None, dtypes=None, config=None, jobs=None, heads=None, starting_layer=0))]
#[allow(clippy::too_many_arguments)]
fn warm<'py>(
    py: Python<'py>,
    arch: Option<&Bound<'py, PyAny>>,
    patterns: Option<&Bound<'py, PyAny>>,
    head_dims: Option<&Bound<'py, PyAny>>,
    dtypes: Option<&Bound<'py, PyAny>>,
    config: Option<PathBuf>,
    jobs: Option<i64>,
    heads: Option<usize>,
    starting_layer: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let mut arches = parse_names("arch", arch, Arch::ALL, Arch::as_str)?;
    let patterns = parse_names("patterns", patterns, Pattern::ALL, Pattern::as_str)?;
    let head_dims = parse_head_dims(head_dims)?;
    let dtypes = parse_names("dtypes", dtypes, DType::ALL, DType::as_str)?;
    let jobs = match jobs {
        Some(n) if n < 1 => return Err(PyValueError::new_err(format!("jobs must be at least 1, got {n}"))),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if config.is_some() && !patterns.is_empty() {
        return Err(PyValueError::new_err("patterns and config exclude each other: the config picks the patterns"));
    }
    if config.is_none() && heads.is_some() {
        return Err(PyValueError::new_err("heads needs config"));
    }
    if arches.is_empty() {
        let gpu = current_gpu().map_err(|e| {
            minf_error(format!(
                "cannot pick a target architecture: {e}; pass arch, e.g. minf.warm(arch=[\"sm_80\", \"sm_90a\"])"
            ))
        })?;
        arches.push(gpu.arch.ok_or_else(|| {
            minf_error(minf_runtime::MinfError::UnsupportedDevice {
                name: gpu.name.clone(),
                major: gpu.compute_capability.0,
                minor: gpu.compute_capability.1,
            })
        })?);
    }
    let attention: Vec<KernelSpec> = match &config {
        Some(path) => {
            let shape = known_model(path).map(|model| model.shape).filter(|s| heads.is_none_or(|h| h == s.heads));
            let loaded = match (heads, shape) {
                (_, Some(shape)) => PatternConfig::load_with_shape(path, shape),
                (Some(heads), None) => PatternConfig::load(path, heads),
                (None, None) => {
                    check_readable(path)?;
                    return Err(PyValueError::new_err(format!(
                        "{}: no known model shape for this file name: pass heads (query heads per layer) and head_dims",
                        path.display()
                    )));
                }
            }
            .map_err(minf_error)?
            .with_starting_layer(starting_layer);
            let head_dims = match (head_dims.as_slice(), loaded.shape()) {
                ([], Some(shape)) => vec![shape.head_dim],
                ([], None) => {
                    return Err(PyValueError::new_err(format!(
                        "{}: the model's head dimension is unknown: pass head_dims",
                        path.display()
                    )))
                }
                (dims, _) => dims.to_vec(),
            };
            config_kernels(&loaded, &head_dims, &dtypes, &arches)
        }
        None => default_kernels(&arches, &patterns, &head_dims, &dtypes),
    };
    if attention.is_empty() {
        return Err(PyValueError::new_err(WarmError::NoKernels.to_string()));
    }
    let attention_count = attention.len();
    let specs = with_index_kernels(attention, &arches);
    let counts = py.detach(|| -> Result<_, WarmError> {
        let cache = KernelCache::from_env().map_err(minf_runtime::MinfError::from)?;
        check_ready(&cache)?;
        let counts = warm_kernels(&cache, &specs, jobs, &|_| {});
        Ok((counts, cache.root().to_path_buf(), cache.is_memory_only()))
    });
    let (counts, root, memory_only) = counts.map_err(minf_error)?;
    if memory_only {
        return Err(minf_error(format!(
            "the kernel cache at {} could not be written: the {} compiled kernel(s) were not saved",
            root.display(),
            counts.compiled
        )));
    }
    let dict = PyDict::new(py);
    dict.set_item("compiled", counts.compiled)?;
    dict.set_item("cached", counts.cached)?;
    dict.set_item("failed", counts.failed.len())?;
    dict.set_item("failures", counts.failed.iter().map(|(name, e)| (name.clone(), e.clone())).collect::<Vec<_>>())?;
    dict.set_item("attention", attention_count)?;
    dict.set_item("index", counts.total() - attention_count)?;
    dict.set_item("arch", arches.iter().map(|a| a.as_str()).collect::<Vec<_>>())?;
    dict.set_item("cache_dir", root.to_string_lossy())?;
    dict.set_item("seconds", counts.seconds)?;
    Ok(dict)
}

/// The native module `minf._minf`.
#[pymodule]
fn _minf(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MinfError", m.py().get_type::<MinfError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The head dimensions minf's kernels are generated for (the Python side's checks read them).
    m.add("HEAD_DIMS", pyo3::types::PyTuple::new(m.py(), HEAD_DIMS)?)?;
    m.add_function(wrap_pyfunction!(doctor, m)?)?;
    m.add_function(wrap_pyfunction!(warm, m)?)?;
    m.add_function(wrap_pyfunction!(tensors::attention_into, m)?)?;
    m.add_class::<tensors::PrefillHandle>()?;
    Ok(())
}
