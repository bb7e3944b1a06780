//! `minf config show` and `minf warm --config` on MInference's shipped configs and on broken files.
//! NVRTC must be installed for the warm test; no GPU is needed.

use minf_codegen::{Arch, DType, IndexKernel};
use minf_runtime::config::PatternConfig;
use std::fs;
use std::path::PathBuf;

mod common;

use common::{minf, text};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A shipped config (`../shared/minference-configs` next to the repository); missing is a failure.
fn shipped(name: &str) -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/minference-configs"));
    let path = dir.join(name);
    assert!(path.is_file(), "the MInference configs are missing: looked for {}", path.display());
    path
}

const PHI: &str = "Phi_3_mini_128k_instruct_kv_out_v32_fit_o_best_pattern.json";

#[test]
fn config_show_on_a_shipped_config() -> TestResult {
    let path = shipped(PHI);
    let output = minf(&["config", "show", path.to_str().ok_or("path")?]).output()?;
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "Phi-3-mini-128k-instruct (32 layers, 32 query heads, 32 KV heads, head_dim 96)",
        "layers:   32, 32 heads each (0 missing",
        "  0-7       vertical_slash 32",
        "  10        a_shape 13, vertical_slash 19",
        "overall:  a_shape 43, vertical_slash 981 (1024 heads)",
        "vertical sizes (vertical_slash heads):",
        "slash sizes (vertical_slash heads):",
        "a_shape:  n_init 100, n_local 800: 43 heads",
    ] {
        assert!(stdout.contains(needle), "no `{needle}` in {}", text(&output));
    }
    // Starting layer and ratio: two dense layers, sizes halved (the fallback 6096 -> 3048 bucket).
    let output =
        minf(&["config", "show", path.to_str().ok_or("path")?, "--starting-layer", "2", "--ratio", "0.5"]).output()?;
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("  0-1       dense 32"), "{}", text(&output));
    assert!(stdout.contains("starting_layer 2, ratio 0.5"), "{}", text(&output));
    Ok(())
}

#[test]
fn config_show_on_broken_and_unknown_files_fails_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad_config.json");
    fs::write(&bad, r#"[{"0": ["vertical_and_slash", 1000, 6096, 0.5]}, {"3": ["stream_lm", 100, 800, 0.9]}]"#)?;
    let output = minf(&["config", "show", bad.to_str().ok_or("path")?, "--heads", "32"]).output()?;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let want =
        format!("{}: layer 1, head 3: unknown pattern \"stream_lm\" (did you mean \"stream_llm\"?)", bad.display());
    assert!(stderr.contains(&want), "{}", text(&output));

    // A file name minf does not know needs --heads.
    let output = minf(&["config", "show", bad.to_str().ok_or("path")?]).output()?;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}: no known model shape", bad.display())), "{}", text(&output));
    assert!(stderr.contains("--heads"), "{}", text(&output));

    let broken = dir.path().join("broken.json");
    fs::write(&broken, "[\n  {\"0\": [\"vertical_and_slash\", 1000, 6096, 0.5]\n]")?;
    let output = minf(&["config", "show", broken.to_str().ok_or("path")?, "--heads", "4"]).output()?;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}:3:1: invalid JSON", broken.display())), "{}", text(&output));

    // A missing file and a folder say so, whatever their names; so does a list without layers.
    let empty = dir.path().join("empty.json");
    fs::write(&empty, "[]")?;
    let missing = dir.path().join("missing.json");
    for (path, heads, want) in [
        (missing.clone(), None, "cannot read the pattern config"),
        (dir.path().to_path_buf(), None, "cannot read the pattern config"),
        (empty, Some("1"), "the config lists no layers"),
    ] {
        let mut args = vec!["config", "show", path.to_str().ok_or("path")?];
        args.extend(heads.map(|h| ["--heads", h]).iter().flatten());
        let output = minf(&args).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{path:?}: {}", text(&output));
        assert!(stderr.contains(&format!("{}: {want}", path.display())), "{path:?}: {}", text(&output));
    }
    Ok(())
}

#[test]
fn heads_against_a_known_model_are_refused() -> TestResult {
    let path = shipped(PHI);
    let path = path.to_str().ok_or("path")?;
    for args in [
        &["config", "show", path, "--heads", "64"][..],
        &["warm", "--arch", "sm_80", "--config", path, "--heads", "16"],
    ] {
        let output = minf(args).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {}", text(&output));
        assert!(
            stderr.contains("Phi-3-mini-128k-instruct, which has 32 query heads per layer"),
            "{args:?}: {}",
            text(&output)
        );
    }
    Ok(())
}

#[test]
fn warm_with_a_config_compiles_exactly_its_kernels() -> TestResult {
    let cache = tempfile::tempdir()?;
    let path = shipped(PHI);
    let output = minf(&["warm", "--config", path.to_str().ok_or("path")?, "--arch", "sm_80", "--dtype", "bf16"])
        .env("MINF_CACHE_DIR", cache.path())
        .output()?;
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let specs = PatternConfig::load_for_model(&path)?.kernel_specs(96, DType::Bf16, Arch::Sm80);
    assert_eq!(specs.len(), 3, "dense, a_shape, vertical_slash: {specs:?}");
    let total = specs.len() + IndexKernel::ALL.len();
    let summary = format!(
        "warmed {total} kernel(s) ({} attention, {} index) for sm_80: {total} compiled, 0 cached, 0 failed",
        specs.len(),
        IndexKernel::ALL.len()
    );
    assert!(stdout.contains(&summary), "{}", text(&output));
    assert!(stdout.contains("needs dense, a_shape, vertical_slash kernels (head_dim [96])"), "{}", text(&output));
    let names: Vec<String> = fs::read_dir(cache.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    for spec in &specs {
        let prefix = format!("{}-", spec.readable_name());
        assert!(names.iter().any(|n| n.starts_with(&prefix)), "no {prefix} entry in {names:?}");
    }

    // --pattern does not go with --config.
    let dir = tempfile::tempdir()?;
    let custom = dir.path().join("custom.json");
    fs::write(&custom, r#"[{"0": ["block_sparse", 1, 1, 0.5]}]"#)?;
    let custom = custom.to_str().ok_or("path")?;
    let output = minf(&["warm", "--config", custom, "--pattern", "dense", "--arch", "sm_80"]).output()?;
    assert!(!output.status.success(), "{}", text(&output));
    Ok(())
}

#[test]
fn warm_with_a_config_of_an_unknown_model_asks_for_its_whole_shape_at_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let custom = dir.path().join("custom.json");
    fs::write(&custom, r#"[{"0": ["block_sparse", 1, 1, 0.5]}]"#)?;
    let custom = custom.to_str().ok_or("path")?;
    for (given, asked) in [
        (&[][..], "pass --heads and --head-dim"),
        (&["--heads", "2"][..], "pass --head-dim"),
        (&["--head-dim", "64"][..], "pass --heads"),
    ] {
        let mut args = vec!["warm", "--config", custom, "--arch", "sm_80"];
        args.extend_from_slice(given);
        let output = minf(&args).env("MINF_CACHE_DIR", dir.path().join("cache")).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{given:?}: {}", text(&output));
        assert!(stderr.contains(&format!("{custom}: no known model shape")), "{given:?}: {}", text(&output));
        assert!(stderr.trim_end().ends_with(asked), "{given:?} should ask for the rest: {}", text(&output));
    }
    Ok(())
}
