//! Kernels declared with `#[minf::sparse_attention]`: the trait the attribute implements, the
//! process-wide registry it submits to, and ahead-of-time warming of every registered kernel.

use crate::attention::{attention_with_spec, AttentionOptions, PatternArgs};
use crate::device::Device;
use crate::error::MinfError;
use crate::jit::{CacheOutcome, KernelCache};
use crate::tensor::{AttentionElement, TensorMut, TensorRef};
use minf_codegen::{render, Arch, DType, KernelSpec, Pattern};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// A kernel declared with `#[minf::sparse_attention(...)]` on a struct; the attribute implements
/// every item but [`SparseAttentionKernel::run`].
pub trait SparseAttentionKernel {
    /// The struct's name.
    const NAME: &'static str;
    /// The attention pattern.
    const PATTERN: Pattern;
    /// The element type of Q, K, V and O.
    const DTYPE: DType;
    /// The target pinned with `arch = "..."`; `None` means the device's architecture.
    const FIXED_ARCH: Option<Arch>;

    /// The kernel's spec for target `arch`; a kernel with [`Self::FIXED_ARCH`] ignores `arch` and
    /// returns the spec for its pinned target.
    fn spec(arch: Arch) -> KernelSpec;

    /// Runs the kernel on `device`: `out = attention(q, k, v)` with the layouts and options of
    /// [`crate::attention()`]; `args` carries what the pattern needs ([`PatternArgs::Dense`] for
    /// dense kernels) and must be of the declared pattern. The tile configuration comes from the attribute, so
    /// `options.spec` must be `None`. Checks that the tensors' dtype is the declared one, that a
    /// pinned target is the device's, and that the spec fits the device (a kernel checked at
    /// compile time for `sm_80`/`sm_90a` may not fit the shared memory of an `sm_86` device).
    fn run<T: AttentionElement>(
        device: &Device,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        out: TensorMut<'_, T>,
        args: PatternArgs<'_>,
        options: AttentionOptions<'_>,
    ) -> Result<(), MinfError> {
        if T::DTYPE != Self::DTYPE {
            return Err(MinfError::Shape(format!(
                "kernel `{}` is declared with dtype = \"{}\" but the tensors are {}",
                Self::NAME,
                Self::DTYPE,
                T::DTYPE
            )));
        }
        if options.spec.is_some() {
            return Err(MinfError::Shape(format!(
                "kernel `{}` takes its spec from #[sparse_attention]; leave options.spec as None",
                Self::NAME
            )));
        }
        let arch = Self::FIXED_ARCH.unwrap_or(device.arch());
        if !arch.runs_on(device.arch()) {
            return Err(MinfError::Shape(format!(
                "kernel `{}` is pinned to arch = \"{arch}\" but device {} is {}",
                Self::NAME,
                device.name(),
                device.arch()
            )));
        }
        let spec = Self::spec(arch);
        spec.validate()?;
        if args.pattern() != Self::PATTERN {
            return Err(MinfError::Shape(format!(
                "kernel `{}` is declared with pattern = \"{}\" but was given {} arguments",
                Self::NAME,
                Self::PATTERN,
                args.pattern()
            )));
        }
        attention_with_spec(device, &spec, q, k, v, out, args, options)
    }
}

/// A kernel submitted to the registry by `#[sparse_attention]`.
#[derive(Debug, Clone, Copy)]
pub struct RegisteredKernel {
    /// The struct's name.
    pub name: &'static str,
    /// The kernel's spec for a target (see [`SparseAttentionKernel::spec`]).
    pub spec: fn(Arch) -> KernelSpec,
    /// The pinned target, if any.
    pub fixed_arch: Option<Arch>,
}

impl RegisteredKernel {
    /// The targets this kernel is built for when warming `arches`: its pinned target, else `arches`.
    pub fn targets(&self, arches: &[Arch]) -> Vec<Arch> {
        self.fixed_arch.map_or_else(|| arches.to_vec(), |arch| vec![arch])
    }
}

inventory::collect!(RegisteredKernel);

/// Every kernel declared with `#[sparse_attention]` in the program (all linked crates).
pub fn registered() -> impl Iterator<Item = &'static RegisteredKernel> {
    inventory::iter::<RegisteredKernel>.into_iter()
}

/// What [`warm_registered`] did; each distinct spec is counted once.
#[derive(Debug, Default)]
pub struct WarmReport {
    /// Specs compiled now.
    pub compiled: usize,
    /// Specs already in the disk or memory cache.
    pub cached: usize,
    /// Specs that failed: `"Name@sm_80"` (names joined with `,` when kernels share a spec) and why.
    pub failed: Vec<(String, MinfError)>,
    /// Wall-clock seconds of the whole warm-up.
    pub seconds: f64,
}

/// Renders and compiles (or finds in `cache`) every registered kernel for each of `arches`, or for
/// its pinned target, with the `cp.async` twin of a tensor-map kernel
/// ([`KernelSpec::cp_async_twin`], labelled `"Name@sm_90a (wgmma twin)"`), in parallel on up to
/// `available_parallelism` threads. Kernels with the same spec are compiled once. Failures (a spec
/// that does not fit a target, NVRTC errors) are collected in the report rather than stopping the
/// other kernels.
pub fn warm_registered(cache: &KernelCache, arches: &[Arch]) -> WarmReport {
    let start = Instant::now();
    let mut jobs: Vec<(KernelSpec, Vec<String>)> = Vec::new();
    let mut index: HashMap<KernelSpec, usize> = HashMap::new();
    for kernel in registered() {
        for arch in kernel.targets(arches) {
            let spec = (kernel.spec)(arch);
            // A tensor-map kernel runs its cp.async twin on tensors no tensor map can view.
            let twin = spec.cp_async_twin().map(|twin| (twin, format!("{}@{arch} (wgmma twin)", kernel.name)));
            for (spec, label) in std::iter::once((spec, format!("{}@{arch}", kernel.name))).chain(twin) {
                match index.get(&spec) {
                    Some(&i) => jobs[i].1.push(label),
                    None => {
                        index.insert(spec, jobs.len());
                        jobs.push((spec, vec![label]));
                    }
                }
            }
        }
    }
    for (_, labels) in &mut jobs {
        labels.sort_unstable();
    }
    let report = Mutex::new(WarmReport::default());
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some((spec, labels)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let outcome = warm_one(cache, spec);
                    // A poisoned lock only means another worker panicked; its counts are still valid.
                    let mut report = report.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    match outcome {
                        Ok(CacheOutcome::Compiled { .. }) => report.compiled += 1,
                        Ok(CacheOutcome::DiskHit | CacheOutcome::MemoryHit) => report.cached += 1,
                        Err(err) => report.failed.push((labels.join(","), err)),
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    report.failed.sort_by(|a, b| a.0.cmp(&b.0));
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// [`warm_registered`] with `device`'s cache, for `device`'s architecture.
pub fn warm_registered_on(device: &Device) -> WarmReport {
    warm_registered(device.cache(), &[device.arch()])
}

fn warm_one(cache: &KernelCache, spec: &KernelSpec) -> Result<CacheOutcome, MinfError> {
    spec.validate()?;
    let rendered = render(spec)?;
    Ok(cache.get_or_compile(&rendered)?.outcome)
}
