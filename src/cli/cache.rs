//! `minf cache list|status|clear`.

use super::CacheCommand;
use minf_runtime::jit::{nvrtc_info, KernelCache};
use std::error::Error;
use std::process::ExitCode;

pub fn cache(command: &CacheCommand) -> Result<ExitCode, Box<dyn Error>> {
    let cache = KernelCache::from_env()?;
    match command {
        CacheCommand::List => {
            let entries = cache.entries()?;
            for entry in &entries {
                let note = if entry.meta.is_none() { "  (no valid meta.json: rebuilt on next use)" } else { "" };
                println!("{:<60} {:>10}{note}", entry.name, human_bytes(entry.size_bytes));
            }
            let total: u64 = entries.iter().map(|e| e.size_bytes).sum();
            println!("{} entries, {} in {}", entries.len(), human_bytes(total), cache.root().display());
        }
        CacheCommand::Status => {
            let entries = cache.entries()?;
            let total: u64 = entries.iter().map(|e| e.size_bytes).sum();
            println!("cache dir:    {}", cache.root().display());
            println!("entries:      {}", entries.len());
            println!("total size:   {}", human_bytes(total));
            println!("nvrtc:        {}", nvrtc_line());
            println!(
                "jit:          {}",
                if cache.jit_disabled() { "disabled (MINF_DISABLE_JIT): misses are errors" } else { "enabled" }
            );
        }
        CacheCommand::Clear => {
            let removed = cache.clear()?;
            println!("removed {removed} entries from {}", cache.root().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn nvrtc_line() -> String {
    match nvrtc_info() {
        Ok(info) => format!("{}.{} at {}", info.version.0, info.version.1, info.path.display()),
        Err(e) => format!("not found: {e}"),
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
