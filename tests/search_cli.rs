//! `minf search` where no GPU is needed: the search space it prints and reads, the checks of its
//! arguments and inputs before any device work, and `minf config show` on a searched config.

mod common;

use common::{minf, text};
use minf::search::{config_json, Candidate, Criterion, HeadChoice, SearchSpace};
use std::fs;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn print_space_writes_a_space_file_that_reads_back() -> TestResult {
    let output = minf(&["search", "--print-space"]).output()?;
    assert!(output.status.success(), "{}", text(&output));
    let printed = String::from_utf8(output.stdout)?;
    assert_eq!(SearchSpace::parse(&printed, "printed.json")?, SearchSpace::default());

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("space.json");
    fs::write(
        &file,
        r#"{"extends": "default", "tolerance": 0.5,
            "candidates": [{"pattern": "vertical_and_slash", "vertical": 200, "slash": 1200}]}"#,
    )?;
    let output = minf(&["search", "--print-space", "--space", file.to_str().ok_or("path")?]).output()?;
    assert!(output.status.success(), "{}", text(&output));
    let space = SearchSpace::parse(&String::from_utf8(output.stdout)?, "extended.json")?;
    assert_eq!(space.candidates.len(), SearchSpace::default().candidates.len() + 1);
    assert_eq!(space.candidates.last(), Some(&Candidate::VerticalSlash { vertical: 200, slash: 1200 }));
    assert_eq!(space.tolerance, 0.5);
    Ok(())
}

#[test]
fn bad_spaces_arguments_and_inputs_fail_before_any_gpu_work() -> TestResult {
    let dir = tempfile::tempdir()?;
    let space = dir.path().join("space.json");
    fs::write(&space, r#"{"candidates": [{"pattern": "vertical_and_slash", "vertical": 10}]}"#)?;
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty)?;
    let out = dir.path().join("out.json");
    let (space, empty, out) =
        (space.to_str().ok_or("path")?, empty.to_str().ok_or("path")?, out.to_str().ok_or("path")?);
    let shape = ["--heads", "4", "--kv-heads", "2", "--head-dim", "64"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--print-space", "--space", space], "missing field `slash`"),
        (vec!["--inputs", empty], "--heads"),
        ([&["--inputs", empty, "-o", out][..], &shape[..], &["--space", space]].concat(), "space.json"),
        ([&["--inputs", empty, "-o", out][..], &shape[..]].concat(), "no layer files"),
        (
            vec!["--inputs", empty, "-o", out, "--heads", "4", "--kv-heads", "3", "--head-dim", "64"],
            "kv heads dividing",
        ),
        (
            vec!["--inputs", empty, "-o", out, "--heads", "4", "--kv-heads", "2", "--head-dim", "100"],
            "invalid --head-dim 100",
        ),
        ([&["--inputs", empty, "-o", out, "--criterion", "speed"][..], &shape[..]].concat(), "speed"),
    ];
    for (args, needle) in cases {
        let output = minf(&[&["search"][..], &args[..]].concat()).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(needle), "minf search {args:?}: {}", text(&output));
        assert!(!stderr.contains("panicked"), "{}", text(&output));
    }
    assert!(!dir.path().join("out.json").exists());
    Ok(())
}

#[test]
fn config_show_reports_what_a_search_chose() -> TestResult {
    let space = SearchSpace::default();
    let choice = |index: usize, score: f64| HeadChoice {
        index,
        candidate: space.candidates[index],
        score,
        cost: 1.0,
        budget: 1.0,
    };
    let layers = vec![vec![choice(0, 0.91), choice(6, 0.99), choice(7, 0.97)], vec![choice(6, 0.95); 3]];
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("searched.json");
    fs::write(&file, config_json(&layers, Criterion::Recall))?;
    let output = minf(&["config", "show", file.to_str().ok_or("path")?, "--heads", "3"]).output()?;
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "overall:  a_shape 1, vertical_slash 4, block_sparse 1 (6 heads)",
        "entries (heads; score min / mean / max, the file's fourth field):",
        "  vertical_and_slash (1000, 4096)         4   0.9500 / 0.9600 / 0.9900\n  stream_llm (100, 800)                   1   \
         0.9100 / 0.9100 / 0.9100\n  block_sparse (top 100)                  1   0.9700 / 0.9700 / 0.9700\n",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    Ok(())
}
