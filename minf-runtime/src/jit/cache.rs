//! The kernel cache: an in-process memory map in front of a directory of compiled kernels.
//!
//! Layout under the root (`$MINF_CACHE_DIR`, else `~/.cache/minf`): one directory per cache key
//! name holding `kernel.cu`, `kernel.cubin` (or `kernel.ptx`) and `meta.json`; `locks/<name>.lock`
//! for builders; `failed/<name>.cu` for sources NVRTC rejected; `.tmp-*` directories while an entry
//! is being written.
//!
//! Entries are published atomically: written and fsynced in a temporary directory inside the root,
//! then renamed into place. Builders take an exclusive per-key file lock and look again before
//! compiling, so concurrent processes compile each kernel once; readers take no lock. A truncated or
//! corrupt entry is detected by its `meta.json` and the blake3 hash of the binary, then rebuilt. A
//! cache directory that cannot be written degrades to memory-only with one warning per process.

use super::nvrtc::{self, nvrtc_info, Compiled};
use super::{CacheOutcome, CachedKernel, JitError};
use minf_codegen::{AnyKernel, CacheKey, CacheKeyInputs, RenderedKernel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const META: &str = "meta.json";
const SOURCE: &str = "kernel.cu";
const CUBIN: &str = "kernel.cubin";
const PTX: &str = "kernel.ptx";
const LOCKS: &str = "locks";
const FAILED: &str = "failed";
const TMP_PREFIX: &str = ".tmp-";
/// Age after which a temporary directory is taken to be left over from a killed process.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// What `meta.json` records about a cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The entry's directory name (readable spec prefix plus 16 hex digits of the key hash).
    pub key_name: String,
    /// The full blake3 hash of the key inputs.
    pub key_hash: String,
    /// The spec the kernel was rendered from.
    pub spec: AnyKernel,
    /// The kernel's entry point.
    pub kernel_name: String,
    /// The NVRTC options it was compiled with.
    pub options: Vec<String>,
    /// NVRTC version as `major.minor`.
    pub nvrtc_version: String,
    /// How long NVRTC took, in seconds.
    pub compile_seconds: f64,
    /// `kernel.cubin` or `kernel.ptx`.
    pub binary_file: String,
    /// Whether the binary is PTX (fallback) rather than CUBIN.
    pub is_ptx: bool,
    /// blake3 of the binary, in hex.
    pub binary_blake3: String,
    /// When the entry was written, in seconds since the Unix epoch.
    pub created_unix_secs: u64,
}

/// One entry of the disk cache, as listed by [`KernelCache::entries`].
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntryInfo {
    /// The entry's directory name.
    pub name: String,
    /// Total size of its files, in bytes.
    pub size_bytes: u64,
    /// Its `meta.json`, or `None` when missing or unparseable (the entry is rebuilt on next use).
    pub meta: Option<EntryMeta>,
}

/// Disk + memory cache of compiled kernels.
#[derive(Debug)]
pub struct KernelCache {
    root: PathBuf,
    jit_disabled: bool,
    memory: Mutex<HashMap<String, CachedKernel>>,
    memory_only: AtomicBool,
}

/// What a lock-free look at the disk found.
enum Lookup {
    Hit { image: Vec<u8>, is_ptx: bool },
    Missing,
    Corrupt(String),
}

impl KernelCache {
    /// Cache at `$MINF_CACHE_DIR`, else the platform cache dir (`~/.cache/minf`); JIT compilation
    /// is disabled when `MINF_DISABLE_JIT` is `1`/`true`/`yes`/`on`.
    pub fn from_env() -> Result<Self, JitError> {
        let root = match std::env::var_os("MINF_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => dirs::cache_dir().ok_or(JitError::NoCacheDir)?.join("minf"),
        };
        let disabled = match std::env::var("MINF_DISABLE_JIT") {
            Ok(value) => parse_flag("MINF_DISABLE_JIT", &value)?,
            Err(std::env::VarError::NotPresent) => false,
            Err(std::env::VarError::NotUnicode(value)) => parse_flag("MINF_DISABLE_JIT", &value.to_string_lossy())?,
        };
        Ok(KernelCache::at(root).with_jit_disabled(disabled))
    }

    /// Cache rooted at `root`, with JIT compilation enabled. The directory is created on first write.
    pub fn at(root: PathBuf) -> Self {
        KernelCache {
            root,
            jit_disabled: false,
            memory: Mutex::new(HashMap::new()),
            memory_only: AtomicBool::new(false),
        }
    }

    /// The same cache with JIT compilation disabled (`true`: a miss is [`JitError::JitDisabled`]) or enabled.
    pub fn with_jit_disabled(mut self, disabled: bool) -> Self {
        self.jit_disabled = disabled;
        self
    }

    /// Whether a cache miss is an error instead of a compile.
    pub fn jit_disabled(&self) -> bool {
        self.jit_disabled
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether writing to the cache directory failed and new kernels are kept in memory only.
    pub fn is_memory_only(&self) -> bool {
        self.memory_only.load(Ordering::Relaxed)
    }

    /// Checks that entries can be written: creates the cache and lock directories and a temporary
    /// directory in the root (removed again). [`KernelCache::get_or_compile`] does not need this (it
    /// degrades to memory-only); callers whose job is the disk cache, like `minf warm`, do.
    pub fn check_writable(&self) -> Result<(), JitError> {
        if self.root.exists() && !self.root.is_dir() {
            let not_a_directory = std::io::Error::other("it exists and is not a directory");
            return Err(JitError::io("using as the cache directory", &self.root)(not_a_directory));
        }
        fs::create_dir_all(&self.root).map_err(JitError::io("creating the cache directory", &self.root))?;
        let locks = self.root.join(LOCKS);
        fs::create_dir_all(&locks).map_err(JitError::io("creating the lock directory", &locks))?;
        let probe = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(&self.root)
            .map_err(JitError::io("creating a temporary directory in", &self.root))?;
        probe.close().map_err(JitError::io("removing a temporary directory in", &self.root))
    }

    /// Returns the compiled kernel: from memory, from disk, or compiled now and published. With JIT
    /// disabled, cached kernels are served even when NVRTC is not installed.
    pub fn get_or_compile(&self, kernel: &RenderedKernel) -> Result<CachedKernel, JitError> {
        let nvrtc = match nvrtc_info() {
            Ok(nvrtc) => nvrtc,
            Err(e) if self.jit_disabled => return self.get_without_nvrtc(kernel, &e),
            Err(e) => return Err(e),
        };
        let key = kernel.cache_key(nvrtc.version);
        if let Some(hit) = self.memory.lock().unwrap_or_else(PoisonError::into_inner).get(&key.name) {
            return Ok(CachedKernel { outcome: CacheOutcome::MemoryHit, ..hit.clone() });
        }
        let entry = self.root.join(&key.name);
        let mut lookup = read_entry(&entry, &key);
        if let Lookup::Hit { image, is_ptx } = lookup {
            return Ok(self.remember(key, image, is_ptx, CacheOutcome::DiskHit, Vec::new()));
        }
        if self.jit_disabled {
            return Err(JitError::JitDisabled { name: key.name, cache_dir: self.root.clone() });
        }
        let lock = if self.is_memory_only() {
            None
        } else {
            match self.lock(&key.name) {
                Ok(lock) => {
                    // Another process may have built it while this one waited for the lock.
                    lookup = read_entry(&entry, &key);
                    Some(lock)
                }
                Err(e) => {
                    self.degrade(&e);
                    None
                }
            }
        };
        match lookup {
            Lookup::Hit { image, is_ptx } => {
                return Ok(self.remember(key, image, is_ptx, CacheOutcome::DiskHit, Vec::new()))
            }
            Lookup::Corrupt(reason) => {
                tracing::warn!(entry = %entry.display(), %reason, "corrupt kernel cache entry; rebuilding it");
                if lock.is_some() {
                    if let Err(e) = self.remove_entry(&entry) {
                        self.degrade(&e);
                    }
                }
            }
            Lookup::Missing => {}
        }
        let start = Instant::now();
        let compiled = match nvrtc::compile(kernel, &key.name) {
            Err(JitError::Compile { kernel: name, log, .. }) => {
                let source_path = self.save_failed_source(&key.name, &kernel.source);
                return Err(JitError::Compile { kernel: name, log, source_path });
            }
            other => other?,
        };
        let seconds = start.elapsed().as_secs_f64();
        tracing::info!(kernel = %key.name, seconds, "compiled kernel with NVRTC");
        for warning in &compiled.performance_warnings {
            tracing::warn!(kernel = %key.name, %warning, "ptxas reports a performance loss");
        }
        if lock.is_some() && !self.is_memory_only() {
            let meta = EntryMeta {
                key_name: key.name.clone(),
                key_hash: key.hash.clone(),
                spec: kernel.kernel,
                kernel_name: kernel.kernel_name.clone(),
                options: kernel.options.clone(),
                nvrtc_version: format!("{}.{}", nvrtc.version.0, nvrtc.version.1),
                compile_seconds: seconds,
                binary_file: if compiled.is_ptx { PTX } else { CUBIN }.to_string(),
                is_ptx: compiled.is_ptx,
                binary_blake3: blake3::hash(&compiled.image).to_hex().to_string(),
                created_unix_secs: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            };
            if let Err(e) = self.publish(&entry, kernel, &compiled, &meta) {
                self.degrade(&e);
            }
        }
        drop(lock);
        let outcome = CacheOutcome::Compiled { seconds };
        Ok(self.remember(key, compiled.image, compiled.is_ptx, outcome, compiled.performance_warnings))
    }

    /// With JIT disabled and no NVRTC to tell the key's version: finds an entry of this kernel
    /// compiled by any NVRTC version, checking its key against the version its meta records.
    fn get_without_nvrtc(&self, kernel: &RenderedKernel, nvrtc_error: &JitError) -> Result<CachedKernel, JitError> {
        let prefix = kernel.readable_name();
        for entry in self.entries().unwrap_or_default() {
            if !entry.name.starts_with(&format!("{prefix}-")) {
                continue;
            }
            let Some(meta) = entry.meta else { continue };
            let Some(version) = parse_version(&meta.nvrtc_version) else { continue };
            let key = CacheKeyInputs::new(kernel, version).key(&prefix);
            if key.name != entry.name {
                continue;
            }
            if let Some(hit) = self.memory.lock().unwrap_or_else(PoisonError::into_inner).get(&key.name) {
                return Ok(CachedKernel { outcome: CacheOutcome::MemoryHit, ..hit.clone() });
            }
            if let Lookup::Hit { image, is_ptx } = read_entry(&self.root.join(&key.name), &key) {
                return Ok(self.remember(key, image, is_ptx, CacheOutcome::DiskHit, Vec::new()));
            }
        }
        tracing::debug!(kernel = %prefix, error = %nvrtc_error, "no cached entry and no NVRTC");
        Err(JitError::JitDisabled { name: format!("{prefix}-*"), cache_dir: self.root.clone() })
    }

    /// The entries on disk, sorted by name (an absent cache directory has none).
    pub fn entries(&self) -> Result<Vec<CacheEntryInfo>, JitError> {
        let dir = match fs::read_dir(&self.root) {
            Ok(dir) => dir,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(JitError::io("reading the cache directory", &self.root)(e)),
        };
        let mut entries = Vec::new();
        for item in dir {
            let item = item.map_err(JitError::io("reading the cache directory", &self.root))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if !is_entry_name(&name) || !path.is_dir() {
                continue;
            }
            // A folder of the entry's name shape holding anything but an entry's files is not
            // minf's: it is neither listed nor removed.
            let mut size_bytes = 0;
            let mut foreign = false;
            for file in fs::read_dir(&path).map_err(JitError::io("reading the cache entry", &path))? {
                let file = file.map_err(JitError::io("reading the cache entry", &path))?;
                let is_file = file.file_type().is_ok_and(|t| t.is_file());
                foreign |= !is_file || ![META, SOURCE, CUBIN, PTX].contains(&&*file.file_name().to_string_lossy());
                size_bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
            }
            if foreign {
                continue;
            }
            let meta = fs::read(path.join(META)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
            entries.push(CacheEntryInfo { name, size_bytes, meta });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Total size of the entries on disk, in bytes.
    pub fn total_size(&self) -> Result<u64, JitError> {
        Ok(self.entries()?.iter().map(|e| e.size_bytes).sum())
    }

    /// Removes every entry, saved failed sources, the lock files no builder holds, and temporary
    /// directories older than an hour (left by killed processes) from disk, and empties the memory
    /// cache; returns how many entries were removed.
    pub fn clear(&self) -> Result<usize, JitError> {
        let entries = self.entries()?;
        for entry in &entries {
            let path = self.root.join(&entry.name);
            fs::remove_dir_all(&path).map_err(JitError::io("removing the cache entry", &path))?;
        }
        let failed = self.root.join(FAILED);
        match fs::remove_dir_all(&failed) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(JitError::io("removing", failed)(e)),
            _ => {}
        }
        self.remove_free_locks()?;
        for item in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let stale = item
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if stale && item.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let path = item.path();
                fs::remove_dir_all(&path).map_err(JitError::io("removing the stale temporary directory", &path))?;
            }
        }
        self.memory.lock().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(entries.len())
    }

    /// Removes the lock files of `locks/` that no builder holds (a held one is left to its builder;
    /// the directory stays, since a builder may be about to create a file in it).
    fn remove_free_locks(&self) -> Result<(), JitError> {
        let dir = self.root.join(LOCKS);
        let items = match fs::read_dir(&dir) {
            Ok(items) => items,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(JitError::io("reading the lock directory", &dir)(e)),
        };
        for item in items {
            let path = item.map_err(JitError::io("reading the lock directory", &dir))?.path();
            let Ok(file) = fs::OpenOptions::new().write(true).open(&path) else { continue };
            if fs4::FileExt::try_lock(&file).is_ok() {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        return Err(JitError::io("removing the lock file", &path)(e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Stores a kernel in memory and returns it with `outcome`.
    fn remember(
        &self,
        key: CacheKey,
        image: Vec<u8>,
        is_ptx: bool,
        outcome: CacheOutcome,
        performance_warnings: Vec<String>,
    ) -> CachedKernel {
        let kernel = CachedKernel {
            key,
            image: Arc::new(image),
            is_ptx,
            outcome,
            performance_warnings: performance_warnings.into(),
        };
        self.memory.lock().unwrap_or_else(PoisonError::into_inner).insert(kernel.key.name.clone(), kernel.clone());
        kernel
    }

    /// Takes the exclusive builder lock of `name`; released when the file is dropped.
    fn lock(&self, name: &str) -> Result<File, JitError> {
        let dir = self.root.join(LOCKS);
        fs::create_dir_all(&dir).map_err(JitError::io("creating the lock directory", &dir))?;
        let path = dir.join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(JitError::io("opening the lock file", &path))?;
        fs4::FileExt::lock(&file).map_err(JitError::io("locking", &path))?;
        Ok(file)
    }

    /// Writes the entry into a temporary directory and renames it into place; if another entry got
    /// there first, that one wins.
    fn publish(
        &self,
        entry: &Path,
        kernel: &RenderedKernel,
        compiled: &Compiled,
        meta: &EntryMeta,
    ) -> Result<(), JitError> {
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(&self.root)
            .map_err(JitError::io("creating a temporary directory in", &self.root))?;
        let meta_json = serde_json::to_vec_pretty(meta).map_err(|e| JitError::Io {
            context: "serialising meta.json for",
            path: entry.to_path_buf(),
            source: Arc::new(e.into()),
        })?;
        write_synced(&tmp.path().join(SOURCE), kernel.source.as_bytes())?;
        write_synced(&tmp.path().join(&meta.binary_file), &compiled.image)?;
        write_synced(&tmp.path().join(META), &meta_json)?;
        sync_dir(tmp.path())?;
        match fs::rename(tmp.path(), entry) {
            Ok(()) => {
                let _published = tmp.keep();
                sync_dir(&self.root)
            }
            Err(_) if entry.join(META).exists() => {
                tracing::debug!(entry = %entry.display(), "another process published this entry first");
                Ok(())
            }
            Err(e) => Err(JitError::io("publishing the cache entry", entry)(e)),
        }
    }

    /// Moves a bad entry out of the way (atomically, so readers never see half of it) and deletes it.
    fn remove_entry(&self, entry: &Path) -> Result<(), JitError> {
        let trash = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(&self.root)
            .map_err(JitError::io("creating a temporary directory in", &self.root))?;
        match fs::rename(entry, trash.path().join("old")) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(JitError::io("removing the cache entry", entry)(e)),
            _ => Ok(()),
        }
    }

    /// Saves a source NVRTC rejected: in the cache's `failed/`, else the system temp dir.
    fn save_failed_source(&self, name: &str, source: &str) -> Option<PathBuf> {
        let dirs = [self.root.join(FAILED), std::env::temp_dir().join("minf-failed")];
        dirs.into_iter().find_map(|dir| {
            let path = dir.join(format!("{name}.cu"));
            fs::create_dir_all(&dir).and_then(|()| fs::write(&path, source)).ok().map(|()| path)
        })
    }

    /// Switches to memory-only after a write failure, warning once per process.
    fn degrade(&self, error: &JitError) {
        static WARNED: Once = Once::new();
        self.memory_only.store(true, Ordering::Relaxed);
        WARNED.call_once(|| {
            tracing::warn!(
                cache_dir = %self.root.display(),
                %error,
                "cannot write to the kernel cache; compiled kernels are kept in memory only for this process"
            );
        });
    }
}

/// Reads and checks an entry without locking.
fn read_entry(entry: &Path, key: &CacheKey) -> Lookup {
    let meta = match fs::read(entry.join(META)) {
        Ok(bytes) => bytes,
        // No directory there, or none can be (the root is a regular file, or cannot be read): missing.
        Err(_) if !entry.exists() => return Lookup::Missing,
        Err(e) => return Lookup::Corrupt(format!("cannot read {META}: {e}")),
    };
    let meta: EntryMeta = match serde_json::from_slice(&meta) {
        Ok(meta) => meta,
        Err(e) => return Lookup::Corrupt(format!("{META} does not parse: {e}")),
    };
    if meta.key_hash != key.hash {
        return Lookup::Corrupt(format!("{META} has key hash {} instead of {}", meta.key_hash, key.hash));
    }
    let expected_file = if meta.is_ptx { PTX } else { CUBIN };
    if meta.binary_file != expected_file {
        return Lookup::Corrupt(format!("{META} names binary {} but is_ptx = {}", meta.binary_file, meta.is_ptx));
    }
    let image = match fs::read(entry.join(expected_file)) {
        Ok(image) => image,
        Err(e) => return Lookup::Corrupt(format!("cannot read {expected_file}: {e}")),
    };
    if blake3::hash(&image).to_hex().as_str() != meta.binary_blake3 {
        return Lookup::Corrupt(format!(
            "{expected_file} ({} bytes) does not match the blake3 hash in {META} (truncated or modified)",
            image.len()
        ));
    }
    Lookup::Hit { image, is_ptx: meta.is_ptx }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), JitError> {
    let mut file = File::create(path).map_err(JitError::io("creating", path))?;
    file.write_all(bytes).map_err(JitError::io("writing", path))?;
    file.sync_all().map_err(JitError::io("syncing", path))
}

fn sync_dir(path: &Path) -> Result<(), JitError> {
    File::open(path).and_then(|dir| dir.sync_all()).map_err(JitError::io("syncing the directory", path))
}

/// Parses `major.minor`.
fn parse_version(text: &str) -> Option<(i32, i32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether `name` has the shape of an entry's folder: a readable spec prefix, a dash and 16
/// lowercase hex digits of the key hash ([`CacheKey`]). Anything else in the cache directory is
/// not an entry (the lock and failed-source folders, temporaries, other programs' files).
fn is_entry_name(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(prefix, hash)| {
        !prefix.is_empty()
            && !prefix.starts_with('.')
            && hash.len() == 16
            && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Parses a boolean environment flag.
fn parse_flag(var: &'static str, value: &str) -> Result<bool, JitError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => {
            Err(JitError::InvalidEnv { var, value: value.to_string(), allowed: "1, true, yes, on, 0, false, no, off" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_reject_junk() {
        assert!(parse_flag("X", "1").is_ok_and(|v| v));
        assert!(parse_flag("X", "TRUE").is_ok_and(|v| v));
        assert!(parse_flag("X", "0").is_ok_and(|v| !v));
        assert!(parse_flag("X", "").is_ok_and(|v| !v));
        let err = parse_flag("MINF_DISABLE_JIT", "maybe").map(|_| ()).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("invalid MINF_DISABLE_JIT=maybe: allowed 1, true, yes, on, 0, false, no, off"));
    }

    #[test]
    fn entry_names_are_a_prefix_and_16_hex_digits() {
        assert!(is_entry_name("dense-bf16-d128-m128n128-sm90a-wgmma-tma-cbf31a02d7701e8b"));
        for name in ["my_project", "dense-0123", "dense-0123456789ABCDEF", "-0123456789abcdef", ".tmp-0123456789abcdef"]
        {
            assert!(!is_entry_name(name), "{name}");
        }
    }

    #[test]
    fn absent_cache_lists_no_entries() -> Result<(), JitError> {
        let cache = KernelCache::at(PathBuf::from("/nonexistent/minf-cache-test"));
        assert!(cache.entries()?.is_empty());
        assert_eq!(cache.total_size()?, 0);
        assert_eq!(cache.clear()?, 0);
        Ok(())
    }

    #[test]
    fn clear_removes_entries_free_lock_files_and_stale_temporaries_only() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (a, b) = ("dense-bf16-d128-0123456789abcdef", "dense-bf16-d64-fedcba9876543210");
        // Not minf's: a folder of another shape, and one of an entry's name holding other files.
        let (project, look_alike) = ("my_project", "notes-00000000000000aa");
        for sub in [a, b, ".tmp-old", ".tmp-fresh", LOCKS, FAILED, project, look_alike] {
            fs::create_dir(dir.path().join(sub))?;
        }
        fs::write(dir.path().join(project).join(META), b"{}")?;
        fs::write(dir.path().join(look_alike).join("notes.txt"), b"keep")?;
        let locks = dir.path().join(LOCKS);
        fs::write(locks.join(format!("{a}.lock")), b"")?;
        let held = File::create(locks.join(format!("{b}.lock")))?;
        fs4::FileExt::lock(&held)?;
        fs::write(dir.path().join(a).join(META), b"{}")?;
        fs::write(dir.path().join(a).join(CUBIN), b"\x7fELF")?;
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        File::open(dir.path().join(".tmp-old"))?.set_modified(two_hours_ago)?;
        let cache = KernelCache::at(dir.path().to_path_buf());
        let listed: Vec<String> = cache.entries()?.into_iter().map(|e| e.name).collect();
        assert_eq!(listed, vec![a, b]);
        assert_eq!(cache.clear()?, 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        assert_eq!(left, vec![".tmp-fresh", LOCKS, project, look_alike]);
        let locks_left: Vec<String> = fs::read_dir(&locks)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert_eq!(locks_left, vec![format!("{b}.lock")], "the free lock file goes, the held one stays");
        drop(held);
        Ok(())
    }

    #[test]
    fn a_root_that_is_a_regular_file_has_missing_entries_and_is_not_writable() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("cache");
        fs::write(&file, b"not a directory")?;
        let key = CacheKey { name: "dense-x".into(), hash: "0".repeat(64) };
        assert!(matches!(read_entry(&file.join(&key.name), &key), Lookup::Missing));
        for root in [file.clone(), file.join("sub")] {
            let cache = KernelCache::at(root.clone());
            let error = cache.check_writable().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(&root.display().to_string()), "{root:?}: {error:?}");
        }
        assert!(KernelCache::at(dir.path().join("new")).check_writable().is_ok());
        Ok(())
    }
}
