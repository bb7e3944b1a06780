//! `minf bench` without a GPU, through the binary: the case list, bad options, the failure on a
//! machine without a GPU, and `minf bench compare`.

mod common;

/// A record file of one case of `method` (the JSON schema of `minf bench --json`).
fn record_file(path: &std::path::Path, method: &str, total_ms: f64) {
    let record = serde_json::json!({
        "method": method, "pattern": "dense", "params": "", "seq": 32768, "heads": 32, "kv_heads": 8,
        "head_dim": 128, "dtype": "bf16", "est_ms": null, "conv_ms": null, "attn_ms": total_ms,
        "total_ms": total_ms, "per_head_ms": total_ms / 32.0, "density": 1.0, "tflops": null,
        "dense_speedup": null, "compile_s": null, "peak_mem_bytes": null, "card": "NVIDIA H100 80GB HBM3",
        "driver": "CUDA 13.0", "version": "test", "date": "2025-01-01"
    });
    std::fs::write(path, serde_json::Value::Array(vec![record]).to_string()).unwrap();
}

#[test]
fn bench_without_a_gpu_fails_and_points_to_doctor() {
    // The machines that run the test suite have no GPU; skip where one is present.
    if minf::device::probe(0).is_ok() {
        eprintln!("skipped: bench_without_a_gpu_fails_and_points_to_doctor checks a machine without a GPU, and this one has one");
        return;
    }
    let output = common::minf(&["bench", "--seqs", "32K", "--patterns", "dense"]).output().unwrap();
    let text = common::text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("minf doctor") && text.contains("needs an NVIDIA GPU"), "{text}");
    assert_eq!(text.matches("minf warm").count(), 1, "the advice once: {text}");
    assert!(!text.contains("panicked"), "{text}");
    let listed =
        common::minf(&["bench", "--seqs", "32K", "--patterns", "dense,block_sparse:100", "--list"]).output().unwrap();
    assert!(listed.status.success(), "{}", common::text(&listed));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 2);
    let bad = common::minf(&["bench", "--patterns", "nope"]).output().unwrap();
    assert!(!bad.status.success() && common::text(&bad).contains("allowed dense"));
}

#[test]
fn index_tile_is_checked_before_the_gpu() {
    let bad = common::minf(&["bench", "--index-tile", "64,64,4", "--list"]).output().unwrap();
    let text = common::text(&bad);
    assert!(!bad.status.success() && text.contains("BLOCK_M,BLOCK_N,WARPS,STAGES,MAINLOOP"), "{text}");
    let engine = common::minf(&["bench", "--index-tile", "64,64,4,2,wgmm", "--list"]).output().unwrap();
    assert!(!engine.status.success() && common::text(&engine).contains("did you mean `wgmma`"));
    let good =
        common::minf(&["bench", "--seqs", "32K", "--patterns", "dense", "--index-tile", "64,64,4,2,wgmma", "--list"])
            .output()
            .unwrap();
    assert!(good.status.success(), "{}", common::text(&good));
    // A fixed tile leaves nothing to choose: the two options exclude each other.
    let both =
        common::minf(&["bench", "--index-tile", "64,64,4,2,wgmma", "--no-tile-choice", "--list"]).output().unwrap();
    let text = common::text(&both);
    assert!(!both.status.success() && text.contains("cannot be used with"), "{text}");
    let fixed = common::minf(&["bench", "--seqs", "32K", "--patterns", "dense", "--no-tile-choice", "--list"])
        .output()
        .unwrap();
    assert!(fixed.status.success(), "{}", common::text(&fixed));
}

#[test]
fn chunk_is_checked_before_the_gpu_and_listed() {
    let listed =
        common::minf(&["bench", "--seqs", "128K", "--patterns", "dense", "--chunk", "8K", "--list"]).output().unwrap();
    let text = common::text(&listed);
    assert!(listed.status.success(), "{text}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("and in chunks of 8K"), "{text}");
    for bad in ["0", "64K,8K", "big"] {
        let output = common::minf(&["bench", "--chunk", bad, "--list"]).output().unwrap();
        let text = common::text(&output);
        assert!(!output.status.success() && text.contains("chunk size"), "{bad}: {text}");
    }
}

/// A file of inputs of 256 tokens with the given heads and head dimension.
fn inputs_file(dir: &std::path::Path, heads: usize, kv_heads: usize, head_dim: usize) -> std::path::PathBuf {
    let seq = 256;
    let values = |n: usize| (0..n).map(|i| (i % 7) as f32 * 0.25).collect::<Vec<f32>>();
    let qkv = minf::HostQkv {
        seq,
        heads,
        kv_heads,
        head_dim,
        q: values(seq * heads * head_dim),
        k: values(seq * kv_heads * head_dim),
        v: values(seq * kv_heads * head_dim),
    };
    let path = dir.join(format!("qkv-{heads}-{kv_heads}-{head_dim}.safetensors"));
    minf::save_safetensors(&qkv, &path).unwrap();
    path
}

#[test]
fn inputs_of_another_model_keep_their_shape() {
    let dir = tempfile::tempdir().unwrap();
    // The default cases, run where the shipped Llama config is found (the package root): a 4/2-head
    // file of head_dim 64 is not a subset of Llama-3-8B's layer, so that case is left out.
    let small = inputs_file(dir.path(), 4, 2, 64);
    let output = common::minf(&["bench", "--list", "--inputs", small.to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{}", common::text(&output));
    assert!(stdout.lines().all(|l| l.contains("heads 4/2") && !l.contains("(of")), "{stdout}");
    assert!(!stdout.contains("config:") && stderr.contains("are not of"), "{}", common::text(&output));
    // A searched config of a model whose heads are no multiple of 8, on its own dump.
    let config = dir.path().join("searched.json");
    let layer = (0..28).map(|h| format!("\"{h}\": [\"vertical_and_slash\", 1000, 6096, 1]")).collect::<Vec<_>>();
    std::fs::write(&config, format!("[{{{}}}]", layer.join(", "))).unwrap();
    let qwen = inputs_file(dir.path(), 28, 4, 128);
    let pattern = format!("config:{}:0", config.display());
    let output = common::minf(&["bench", "--list", "--inputs", qwen.to_str().unwrap(), "--patterns", &pattern])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", common::text(&output));
    assert!(stdout.contains("heads 28/4") && !stdout.contains("(of"), "{}", common::text(&output));
}

#[test]
fn list_takes_length_and_heads_from_the_inputs_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = inputs_file(dir.path(), 4, 2, 64);
    let output =
        common::minf(&["bench", "--list", "--patterns", "dense", "--inputs", path.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", common::text(&output));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one case, at the file's length: {stdout}");
    assert!(lines[0].contains("256") && lines[0].contains("heads 4/2"), "{stdout}");
    let missing = dir.path().join("missing.safetensors");
    let output = common::minf(&["bench", "--list", "--inputs", missing.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success(), "{}", common::text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.safetensors"), "{}", common::text(&output));
}

#[test]
fn compare_cli_writes_markdown_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("minf.json"), dir.path().join("peers.json"));
    record_file(&a, "minf", 30.0);
    record_file(&b, "sdpa_flash", 33.0);
    let (md, svg) = (dir.path().join("out.md"), dir.path().join("out.svg"));
    let output = common::minf(&[
        "bench",
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    assert!(std::fs::read_to_string(&md).unwrap().contains("1.10x"));
    assert!(std::fs::read_to_string(&svg).unwrap().contains("sdpa_flash dense"));
}

/// A config of a model minf does not know: `layers` layers of `heads` vertical-slash heads.
fn unknown_model_config(dir: &std::path::Path, heads: usize, layers: usize) -> std::path::PathBuf {
    let layer: serde_json::Map<String, serde_json::Value> =
        (0..heads).map(|h| (h.to_string(), serde_json::json!(["vertical_and_slash", 1000, 6096, 0.5]))).collect();
    let path = dir.join(format!("custom_{heads}_heads.json"));
    std::fs::write(&path, serde_json::Value::Array(vec![serde_json::Value::Object(layer); layers]).to_string())
        .unwrap();
    path
}

#[test]
fn list_reads_each_config_and_shows_its_heads() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent.json");
    let output =
        common::minf(&["bench", "--list", "--patterns", &format!("config:{}", missing.display())]).output().unwrap();
    let text = common::text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains(&format!("{}: cannot read the pattern config", missing.display())), "{text}");

    let config = unknown_model_config(dir.path(), 36, 4);
    let pattern = format!("config:{}:2", config.display());
    let list = |extra: &[&str]| {
        let mut args = vec!["bench", "--list", "--seqs", "32K,1M", "--patterns", pattern.as_str()];
        args.extend_from_slice(extra);
        common::minf(&args).output().unwrap()
    };
    // Its model's key/value heads are unknown and the default 8 does not divide 36.
    let output = list(&[]);
    let text = common::text(&output);
    assert!(!output.status.success() && text.contains("pass --kv-heads (a divisor of 36)"), "{text}");
    let output = list(&["--kv-heads", "4"]);
    let text = common::text(&output);
    assert!(output.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("custom_36_heads.json:2")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with("heads 36/4"), "the config's 36 heads: {text}");
    assert!(lines[1].ends_with("heads 9/1 (of 36)"), "one KV head's group at 1M: {text}");

    let output = list(&["--kv-heads", "4", "--heads", "40"]);
    let text = common::text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("--heads 40") && text.contains("36 query heads per layer"), "{text}");
    let far = format!("config:{}:9", config.display());
    let output = common::minf(&["bench", "--list", "--kv-heads", "4", "--patterns", &far]).output().unwrap();
    let text = common::text(&output);
    assert!(!output.status.success() && text.contains("layer 9 is out of range"), "{text}");
}
