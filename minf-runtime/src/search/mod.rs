//! Offline, kernel-aware pattern search: for each layer and query head of a model, which of a
//! [`SearchSpace`]'s candidates runs best at equal realised cost, on reference prompts' Q/K/V,
//! written as a per-head config in MInference's format that [`PatternConfig`](crate::PatternConfig)
//! and [`Prefill`](crate::Prefill) read.
//!
//! - [`space`]: the candidates (default: MInference's code set and its paper's equal-FLOPs set),
//!   the cost budget, and the space file users extend it with;
//! - [`gpu`]: each candidate evaluated with minf's own estimates and kernels, exactly as `Prefill`
//!   runs them, on sampled query rows;
//! - [`cost`]: the realised cost of what the kernel computed (64-wide ranges, 128-row blocks);
//! - [`choice`]: the two criteria (MInference's mismatch count, attention recall) and the rule
//!   that compares candidates at equal cost;
//! - [`files`]: the input layout, the resumable progress file and the config written.
//!
//! [`run_search`] ties them together, one layer at a time, loading the next layer's files while
//! the device evaluates the current one. It is deterministic in its inputs (see `docs/search.md`).

pub mod choice;
pub mod cost;
pub mod files;
pub mod gpu;
pub mod space;

pub use choice::{choose, Criterion, Evaluation, MISMATCH_THRESHOLD, RECALL_DECIMALS};
pub use files::{config_json, progress_path, HeadChoice, Progress, SearchHeader, SearchInputs};
pub use gpu::{Evaluator, PromptEvaluation};
pub use space::{Candidate, SearchSpace, SpaceError};

use crate::device::Device;
use crate::error::MinfError;
use crate::qkv::{load_safetensors, HostQkv};
use std::path::Path;
use std::time::Instant;

/// Default number of 128-row blocks scored and costed per prompt (4096 query rows).
pub const DEFAULT_SAMPLE_BLOCKS: usize = 32;

impl From<SpaceError> for MinfError {
    fn from(error: SpaceError) -> MinfError {
        MinfError::Config(Box::new(error))
    }
}

/// How a search scores and samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchOptions {
    /// The score candidates are compared by.
    pub criterion: Criterion,
    /// 128-row blocks scored and costed per prompt (0: all; [`cost::RowSample::new`]).
    pub sample_blocks: usize,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions { criterion: Criterion::Mismatch, sample_blocks: DEFAULT_SAMPLE_BLOCKS }
    }
}

/// The attention shape every input file must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// Each head's choice from its candidates' evaluations over every prompt of a layer
/// ([`choose`]'s rule).
pub fn choose_layer(space: &SearchSpace, criterion: Criterion, prompts: &[PromptEvaluation]) -> Vec<HeadChoice> {
    let heads = prompts.first().and_then(|p| p.evaluations.first()).map_or(0, Vec::len);
    let budget: f64 = prompts.iter().map(|p| p.budget).sum();
    (0..heads)
        .filter_map(|h| {
            let totals: Vec<Evaluation> = (0..space.candidates.len())
                .map(|c| {
                    let mut total = Evaluation::default();
                    for prompt in prompts {
                        if let Some(e) = prompt.evaluations.get(c).and_then(|heads| heads.get(h)) {
                            total.add(e);
                        }
                    }
                    total
                })
                .collect();
            let index = choose(&totals, criterion, budget, space.tolerance)?;
            Some(HeadChoice {
                index,
                candidate: space.candidates[index],
                score: totals[index].score(criterion),
                cost: totals[index].cost,
                budget,
            })
        })
        .collect()
}

/// What [`run_search`] reports after each layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerReport<'a> {
    /// The layer.
    pub layer: usize,
    /// Layers in all.
    pub layers: usize,
    /// Whether the layer came from the progress file (not searched again).
    pub resumed: bool,
    /// Seconds spent reading its files (overlapping the previous layer's evaluation).
    pub load_seconds: f64,
    /// Seconds spent evaluating it.
    pub evaluate_seconds: f64,
    /// Each head's choice.
    pub choices: &'a [HeadChoice],
}

/// Reads one layer's files and checks their shape.
fn load_layer(files: &[std::path::PathBuf], shape: SearchShape) -> Result<Vec<HostQkv>, MinfError> {
    files
        .iter()
        .map(|path| {
            let qkv = load_safetensors(path)?;
            if (qkv.heads, qkv.kv_heads, qkv.head_dim) != (shape.heads, shape.kv_heads, shape.head_dim) {
                return Err(MinfError::Shape(format!(
                    "{}: q/k/v have {} query heads, {} key/value heads and head_dim {}, but the search was given {}, \
                     {} and {}",
                    path.display(),
                    qkv.heads,
                    qkv.kv_heads,
                    qkv.head_dim,
                    shape.heads,
                    shape.kv_heads,
                    shape.head_dim
                )));
            }
            Ok(qkv)
        })
        .collect()
}

/// Searches every layer of `inputs` not yet in the progress file next to `output` on `device`,
/// then writes the config to `output` (through a temporary file, so a reader never sees half a
/// config). Returns `choices[layer][head]`.
pub fn run_search(
    device: &Device,
    inputs: &SearchInputs,
    shape: SearchShape,
    space: &SearchSpace,
    options: SearchOptions,
    output: &Path,
    on_layer: impl FnMut(&LayerReport<'_>),
) -> Result<Vec<Vec<HeadChoice>>, MinfError> {
    let mut evaluator = Evaluator::new(device, space.clone(), options.sample_blocks);
    run_search_with(|qkv| evaluator.evaluate(qkv), inputs, shape, space, options, output, on_layer)
}

/// [`run_search`] with another evaluation of one prompt's layer (`evaluate` must give a
/// [`PromptEvaluation`] for `space`'s candidates): the loading, choosing, progress and writing
/// around it.
pub fn run_search_with(
    mut evaluate: impl FnMut(&HostQkv) -> Result<PromptEvaluation, MinfError>,
    inputs: &SearchInputs,
    shape: SearchShape,
    space: &SearchSpace,
    options: SearchOptions,
    output: &Path,
    mut on_layer: impl FnMut(&LayerReport<'_>),
) -> Result<Vec<Vec<HeadChoice>>, MinfError> {
    let header = SearchHeader::new(
        inputs,
        space,
        options.criterion,
        options.sample_blocks,
        (shape.heads, shape.kv_heads, shape.head_dim),
    )?;
    let mut progress = Progress::open(progress_path(output), &header, space)?;
    let layers = inputs.layers();
    for (&layer, choices) in progress.done().range(..layers) {
        on_layer(&LayerReport { layer, layers, resumed: true, load_seconds: 0.0, evaluate_seconds: 0.0, choices });
    }
    let pending: Vec<usize> = (0..layers).filter(|l| !progress.done().contains_key(l)).collect();
    std::thread::scope(|scope| -> Result<(), MinfError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let files = &inputs.files;
        let loading = pending.clone();
        scope.spawn(move || {
            for layer in loading {
                let started = Instant::now();
                let loaded = load_layer(&files[layer], shape).map(|qkv| (layer, qkv, started.elapsed().as_secs_f64()));
                let failed = loaded.is_err();
                if sender.send(loaded).is_err() || failed {
                    break;
                }
            }
        });
        for _ in &pending {
            let (layer, prompts, load_seconds) = receiver
                .recv()
                .map_err(|_| MinfError::Search("the input reader stopped before the last layer".into()))??;
            let started = Instant::now();
            let evaluations = prompts.iter().map(&mut evaluate).collect::<Result<Vec<_>, MinfError>>()?;
            if let Some(bad) = evaluations.iter().find(|e| e.evaluations.len() != space.candidates.len()) {
                return Err(MinfError::Search(format!(
                    "layer {layer}: an evaluation of {} candidates for a space of {}",
                    bad.evaluations.len(),
                    space.candidates.len()
                )));
            }
            let choices = choose_layer(space, options.criterion, &evaluations);
            let evaluate_seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                "search: layer {layer} of {layers}: read in {load_seconds:.1} s, evaluated in {evaluate_seconds:.2} s"
            );
            on_layer(&LayerReport { layer, layers, resumed: false, load_seconds, evaluate_seconds, choices: &choices });
            progress.record(layer, choices)?;
        }
        Ok(())
    })?;
    let choices: Vec<Vec<HeadChoice>> = (0..layers).filter_map(|l| progress.done().get(&l).cloned()).collect();
    let text = config_json(&choices, options.criterion);
    files::write_atomically(output, text.as_bytes())?;
    Ok(choices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(mismatches: u64, cost: f64) -> Evaluation {
        Evaluation { mismatches, recall_sum: 0.0, rows: 1, cost }
    }

    #[test]
    fn layers_choose_over_the_sum_of_their_prompts() {
        let space = SearchSpace {
            candidates: vec![
                Candidate::StreamLlm { n_init: 64, n_local: 512 },
                Candidate::VerticalSlash { vertical: 100, slash: 800 },
            ],
            budget_keys: 1000,
            tolerance: 0.0,
        };
        // `evaluations[candidate][head]`. Head 0: candidate 1 scores better on both prompts; head 1:
        // both total 10 mismatches and the cheaper candidate 0 wins.
        let prompts = [
            PromptEvaluation {
                evaluations: vec![vec![eval(5, 10.0), eval(9, 10.0)], vec![eval(1, 12.0), eval(10, 12.0)]],
                budget: 50.0,
                rows: 1,
            },
            PromptEvaluation {
                evaluations: vec![vec![eval(5, 10.0), eval(1, 10.0)], vec![eval(1, 12.0), eval(0, 12.0)]],
                budget: 50.0,
                rows: 1,
            },
        ];
        let choices = choose_layer(&space, Criterion::Mismatch, &prompts);
        assert_eq!(choices.len(), 2);
        assert_eq!((choices[0].index, choices[0].score, choices[0].cost, choices[0].budget), (1, 2.0, 24.0, 100.0));
        assert_eq!(choices[0].candidate, space.candidates[1]);
        assert_eq!((choices[1].index, choices[1].score, choices[1].cost), (0, 10.0, 20.0));
        // The same evaluations always give the same choices.
        assert_eq!(choose_layer(&space, Criterion::Mismatch, &prompts), choices);
        assert!(choose_layer(&space, Criterion::Mismatch, &[]).is_empty());
    }

    /// Two prompts of three tiny layers; `q[0]` holds the layer number, `q[1]` the prompt's.
    fn write_inputs(dir: &Path, heads: usize) -> SearchInputs {
        for (p, prompt) in ["one", "two"].iter().enumerate() {
            std::fs::create_dir_all(dir.join(prompt)).unwrap();
            for layer in 0..3 {
                let (seq, d) = (64, 8);
                let mut q = vec![0.5f32; seq * heads * d];
                (q[0], q[1]) = (layer as f32, p as f32);
                let qkv =
                    HostQkv { seq, heads, kv_heads: 1, head_dim: d, q, k: vec![1.0; seq * d], v: vec![2.0; seq * d] };
                crate::save_safetensors(&qkv, dir.join(prompt).join(format!("layer_{layer}.safetensors"))).unwrap();
            }
        }
        SearchInputs::discover(dir).unwrap()
    }

    /// A stand-in for the GPU: candidate `c` of head `h` in layer `l` has `(c + h + l) % 3`
    /// mismatches per prompt (plus one on the second prompt for candidate 0) and costs `10 c`.
    fn fake(qkv: &HostQkv) -> Result<PromptEvaluation, MinfError> {
        let (layer, prompt) = (qkv.q[0] as u64, qkv.q[1] as u64);
        let evaluations = (0..3u64)
            .map(|c| {
                (0..qkv.heads as u64)
                    .map(|h| Evaluation {
                        mismatches: (c + h + layer) % 3 + u64::from(c == 0) * prompt,
                        recall_sum: 0.0,
                        rows: 1,
                        cost: 10.0 * c as f64,
                    })
                    .collect()
            })
            .collect();
        Ok(PromptEvaluation { evaluations, budget: 20.0, rows: 1 })
    }

    #[test]
    fn searches_resume_from_their_progress_and_repeat_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = write_inputs(&dir.path().join("in"), 2);
        let space =
            SearchSpace { candidates: SearchSpace::default().candidates[..3].to_vec(), ..SearchSpace::default() };
        let shape = SearchShape { heads: 2, kv_heads: 1, head_dim: 8 };
        let options = SearchOptions::default();
        let output = dir.path().join("config.json");
        let mut calls = 0;
        // The evaluation fails on layer 1: layer 0 is kept in the progress file, no config written.
        let failing = |qkv: &HostQkv| {
            calls += 1;
            if qkv.q[0] == 1.0 {
                return Err(MinfError::Search("device lost".into()));
            }
            fake(qkv)
        };
        let error = run_search_with(failing, &inputs, shape, &space, options, &output, |_| {}).unwrap_err();
        assert!(error.to_string().contains("device lost"));
        assert_eq!(calls, 3);
        assert!(!output.exists());

        let mut reports = Vec::new();
        let counted = |qkv: &HostQkv| {
            calls += 1;
            fake(qkv)
        };
        let record = |r: &LayerReport<'_>| reports.push((r.layer, r.resumed, r.choices.len()));
        let choices = run_search_with(counted, &inputs, shape, &space, options, &output, record).unwrap();
        // Layers 1 and 2, two prompts each.
        assert_eq!(calls, 7);
        assert_eq!(reports, vec![(0, true, 2), (1, false, 2), (2, false, 2)]);
        // Layer 0, head 0: candidates 0, 1, 2 have 0 + 1, 1 + 1 and 2 + 2 mismatches over the two
        // prompts: candidate 0. Head 1: 1 + 2, 2 + 2 and 0 + 0: candidate 2 (cost 40, within the
        // budget of 40 times 1.25).
        assert_eq!(choices[0].iter().map(|c| c.index).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!((choices[0][0].score, choices[0][0].cost, choices[0][0].budget), (1.0, 0.0, 40.0));
        let text = std::fs::read_to_string(&output).unwrap();
        assert_eq!(text, config_json(&choices, Criterion::Mismatch));

        // Again: nothing evaluated, the same file.
        calls = 0;
        let again = run_search_with(
            |q| {
                calls += 1;
                fake(q)
            },
            &inputs,
            shape,
            &space,
            options,
            &output,
            |_| {},
        )
        .unwrap();
        assert_eq!((calls, &again), (0, &choices));
        assert_eq!(std::fs::read_to_string(&output).unwrap(), text);
        // A fresh search of the same inputs: the same file.
        let fresh = dir.path().join("fresh.json");
        run_search_with(fake, &inputs, shape, &space, options, &fresh, |_| {}).unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), text);
        // Inputs of another shape are refused, naming the file.
        let message = run_search_with(
            fake,
            &inputs,
            SearchShape { heads: 4, ..shape },
            &space,
            options,
            &dir.path().join("other.json"),
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("layer_0.safetensors") && message.contains("2 query heads"), "{message}");
    }
}
