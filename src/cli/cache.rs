//! `minf cache list|status|clear`.

use super::output::outln;
use super::CacheCommand;
use minf_runtime::doctor::human_bytes;
use minf_runtime::jit::{nvrtc_info, KernelCache};
use std::error::Error;
use std::process::ExitCode;

/// Runs `minf cache list|status|clear`.
pub fn cache(command: &CacheCommand) -> Result<ExitCode, Box<dyn Error>> {
    let cache = KernelCache::from_env()?;
    match command {
        CacheCommand::List => {
            let entries = cache.entries()?;
            for entry in &entries {
                let note = if entry.meta.is_none() { "  (no valid meta.json: rebuilt on next use)" } else { "" };
                outln!("{:<60} {:>10}{note}", entry.name, human_bytes(entry.size_bytes))?;
            }
            let total: u64 = entries.iter().map(|e| e.size_bytes).sum();
            outln!("{} entries, {} in {}", entries.len(), human_bytes(total), cache.root().display())?;
        }
        CacheCommand::Status => {
            let entries = cache.entries()?;
            let total: u64 = entries.iter().map(|e| e.size_bytes).sum();
            outln!("cache dir:    {}", cache.root().display())?;
            outln!("entries:      {}", entries.len())?;
            outln!("total size:   {}", human_bytes(total))?;
            outln!("nvrtc:        {}", nvrtc_line())?;
            outln!(
                "jit:          {}",
                if cache.jit_disabled() { "disabled (MINF_DISABLE_JIT): misses are errors" } else { "enabled" }
            )?;
        }
        CacheCommand::Clear => {
            let removed = cache.clear()?;
            outln!("removed {removed} entries from {}", cache.root().display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// NVRTC's version and path, or why it was not found.
pub fn nvrtc_line() -> String {
    minf_runtime::doctor::nvrtc_line(&nvrtc_info())
}
