//! The search's files: the input directory, the per-layer progress file and the config it writes.
//!
//! **Inputs.** One safetensors file per layer, named `layer_<n>.safetensors` (`n` decimal, any
//! zero padding: `layer_7` and `layer_07` are both layer 7), in the format
//! [`load_safetensors`](crate::load_safetensors) reads (tensors `q`, `k`, `v`, post-rotary). One
//! prompt: the files sit in the directory itself. Several prompts: one subdirectory per prompt
//! (taken in name order), each with the same layers. Layers run from 0 without gaps. Other files
//! are ignored.
//!
//! **Progress.** A JSON-lines file next to the output (`<output>.progress`): a header line with
//! what the search was started with (the space, the criterion, the sample, the model shape and
//! the inputs' names and sizes), then one line per finished layer. A search started again with
//! the same header skips the layers listed; with another header it stops with an error rather
//! than mixing results.
//!
//! **Config.** MInference's JSON format: a list with one object per layer mapping each query
//! head (`"0"`, `"1"`, ...) to `[pattern, size, size, score]`, the score being the criterion's
//! value on the sampled rows (a mismatch count, or a mean recall rounded to 6 decimals).

use super::choice::{Criterion, RECALL_DECIMALS};
use super::space::{Candidate, SearchSpace};
use crate::error::MinfError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The input files: `files[layer][prompt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchInputs {
    /// The directory given.
    pub dir: PathBuf,
    /// The prompts' directories (the input directory itself for one prompt).
    pub prompts: Vec<PathBuf>,
    /// `files[layer][prompt]`.
    pub files: Vec<Vec<PathBuf>>,
}

/// Replaces `path` with `bytes` atomically: a temporary file beside it, written and synced, renamed
/// over it, so an interruption leaves the old file or the new one, never a cut one. The file gets
/// the permissions a plain create would (0666 less the umask), not a temporary file's 0600.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MinfError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".minf-search-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(dir).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.as_file().sync_all().map_err(io_error(path))?;
    file.persist(path).map_err(|e| io_error(path)(e.error))?;
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> MinfError + '_ {
    move |source| MinfError::Io { path: path.to_path_buf(), source }
}

fn input_error(dir: &Path, message: String) -> MinfError {
    MinfError::Search(format!("inputs {}: {message}", dir.display()))
}

/// The layer number of a file named `layer_<n>.safetensors`.
pub fn layer_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("layer_")?.strip_suffix(".safetensors")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The layer files of one directory, by layer.
fn layer_files(dir: &Path) -> Result<BTreeMap<usize, PathBuf>, MinfError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let Some(layer) = entry.file_name().to_str().and_then(layer_of) else { continue };
        if let Some(other) = files.insert(layer, entry.path()) {
            return Err(input_error(
                dir,
                format!("layer {layer} has two files, {} and {}", other.display(), entry.path().display()),
            ));
        }
    }
    Ok(files)
}

impl SearchInputs {
    /// Finds the layer files of `dir` (see the [module docs](self)).
    pub fn discover(dir: impl AsRef<Path>) -> Result<SearchInputs, MinfError> {
        let dir = dir.as_ref();
        let own = layer_files(dir)?;
        let prompts: Vec<PathBuf> = if own.is_empty() {
            let mut subdirs = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
                let path = entry.map_err(io_error(dir))?.path();
                if path.is_dir() {
                    subdirs.push(path);
                }
            }
            subdirs.sort();
            subdirs
        } else {
            vec![dir.to_path_buf()]
        };
        let mut per_prompt = Vec::new();
        for prompt in &prompts {
            let files = if prompt == dir { own.clone() } else { layer_files(prompt)? };
            if !files.is_empty() {
                per_prompt.push((prompt.clone(), files));
            }
        }
        let Some((first_dir, first)) = per_prompt.first() else {
            return Err(input_error(
                dir,
                "no layer files: expected layer_<n>.safetensors files (q, k, v of layer n) in the directory, or one \
                 subdirectory per prompt holding them"
                    .into(),
            ));
        };
        let layers = first.len();
        if let Some(missing) = (0..layers).find(|l| !first.contains_key(l)) {
            return Err(input_error(
                dir,
                format!("{}: layer {missing} is missing; layers must run from 0 without gaps", first_dir.display()),
            ));
        }
        for (prompt, files) in &per_prompt {
            if !files.keys().copied().eq(0..layers) {
                return Err(input_error(
                    dir,
                    format!(
                        "{} has layers {:?} but {} has 0 to {}: every prompt needs the same layers",
                        prompt.display(),
                        files.keys().collect::<Vec<_>>(),
                        first_dir.display(),
                        layers - 1
                    ),
                ));
            }
        }
        let files = (0..layers).map(|l| per_prompt.iter().map(|(_, files)| files[&l].clone()).collect()).collect();
        Ok(SearchInputs { dir: dir.to_path_buf(), prompts: per_prompt.into_iter().map(|(p, _)| p).collect(), files })
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.files.len()
    }

    /// What identifies the inputs in a progress file: every file's path below the directory, its
    /// size and a hash of samples of its bytes ([`content_sample_hash`]), so a prompt dumped
    /// again into the same files (same shapes, other values) is not taken for the one searched.
    fn fingerprint(&self) -> Result<Value, MinfError> {
        let mut entries = Vec::new();
        for path in self.files.iter().flatten() {
            let size = std::fs::metadata(path).map_err(io_error(path))?.len();
            let name = path.strip_prefix(&self.dir).unwrap_or(path).display().to_string();
            let hash = content_sample_hash(path, size)?;
            entries.push(json!([name, size, hash]));
        }
        Ok(Value::Array(entries))
    }
}

/// Pieces of a file [`content_sample_hash`] reads, and their size: 1 MiB of a file at most.
const SAMPLE_PIECES: u64 = 16;
const SAMPLE_PIECE_BYTES: u64 = 64 << 10;

/// A BLAKE3 hash (hex) of `SAMPLE_PIECES` pieces of the file spread from its start to its end (all
/// of a small file): cheap next to reading the file, and it changes when its values do.
fn content_sample_hash(path: &Path, size: u64) -> Result<String, MinfError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut piece = vec![0u8; SAMPLE_PIECE_BYTES as usize];
    let last_start = size.saturating_sub(SAMPLE_PIECE_BYTES);
    for i in 0..SAMPLE_PIECES {
        let start = last_start * i / (SAMPLE_PIECES - 1);
        let len = SAMPLE_PIECE_BYTES.min(size - start) as usize;
        file.seek(SeekFrom::Start(start)).map_err(io_error(path))?;
        file.read_exact(&mut piece[..len]).map_err(io_error(path))?;
        hasher.update(&piece[..len]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// One head's choice.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadChoice {
    /// Index of the winner in the space.
    pub index: usize,
    /// The winner.
    pub candidate: Candidate,
    /// Its score under the criterion.
    pub score: f64,
    /// Its cost (units of 64 × 64).
    pub cost: f64,
    /// The head's budget (same units).
    pub budget: f64,
}

/// The config text for `layers[layer][head]`: MInference's JSON format, one layer per line.
pub fn config_json(layers: &[Vec<HeadChoice>], criterion: Criterion) -> String {
    let mut text = String::from("[\n");
    for (l, heads) in layers.iter().enumerate() {
        let entries: Vec<String> = heads
            .iter()
            .enumerate()
            .map(|(h, choice)| {
                let (a, b) = choice.candidate.sizes();
                let entry =
                    json!([choice.candidate.file_pattern().as_str(), a, b, score_value(choice.score, criterion)]);
                format!("\"{h}\": {entry}")
            })
            .collect();
        text.push_str(&format!("{{{}}}{}\n", entries.join(", "), if l + 1 < layers.len() { "," } else { "" }));
    }
    text.push_str("]\n");
    text
}

/// A score as JSON: an integer count for mismatches, a recall rounded to [`RECALL_DECIMALS`]
/// decimals (0 if not finite), so the last bits of a float sum never change the file.
fn score_value(score: f64, criterion: Criterion) -> Value {
    let scale = 10f64.powi(RECALL_DECIMALS);
    match criterion {
        Criterion::Mismatch if score.is_finite() && score >= 0.0 => json!(score as u64),
        _ => serde_json::Number::from_f64((score * scale).round() / scale).map_or(json!(0), Value::Number),
    }
}

/// What a search was started with; equal headers mean a progress file may be resumed.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHeader {
    /// The header as written.
    value: Value,
}

impl SearchHeader {
    /// The header of a search of `inputs` under these settings.
    pub fn new(
        inputs: &SearchInputs,
        space: &SearchSpace,
        criterion: Criterion,
        sample_blocks: usize,
        shape: (usize, usize, usize),
    ) -> Result<SearchHeader, MinfError> {
        let space: Value = serde_json::from_str(&space.to_json()).unwrap_or(Value::Null);
        Ok(SearchHeader {
            value: json!({
                "minf_search": 1,
                "criterion": criterion.as_str(),
                "sample_blocks": sample_blocks,
                "heads": shape.0,
                "kv_heads": shape.1,
                "head_dim": shape.2,
                "space": space,
                "inputs": inputs.fingerprint()?,
            }),
        })
    }
}

/// The progress file: the layers already searched, and appending new ones.
#[derive(Debug)]
pub struct Progress {
    path: PathBuf,
    done: BTreeMap<usize, Vec<HeadChoice>>,
}

/// The progress file of output `output`: `<output>.progress`.
pub fn progress_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".progress");
    PathBuf::from(name)
}

impl Progress {
    /// Opens `path`: reads its finished layers when its header is `header`, starts it when it does
    /// not exist, and refuses one written by another search. A last line cut short (an interrupted
    /// write) is dropped.
    pub fn open(path: impl AsRef<Path>, header: &SearchHeader, space: &SearchSpace) -> Result<Progress, MinfError> {
        let path = path.as_ref().to_path_buf();
        let mut done = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut lines = text.lines();
                let first: Option<Value> = lines.next().and_then(|line| serde_json::from_str(line).ok());
                if first.as_ref() != Some(&header.value) {
                    return Err(MinfError::Search(format!(
                        "{}: this progress file was written by a search with other inputs or settings (space, \
                         criterion, sample, shape); delete it to start again, or run with the same settings",
                        path.display()
                    )));
                }
                for line in lines {
                    let Ok(value) = serde_json::from_str::<Value>(line) else { break };
                    let (layer, heads) = parse_layer_line(&value, space).ok_or_else(|| {
                        MinfError::Search(format!("{}: malformed layer line: {line}", path.display()))
                    })?;
                    done.insert(layer, heads);
                }
                // Rewrite without a cut-short last line, so appends start on a fresh line.
                let mut clean = format!("{}\n", header.value);
                for (layer, heads) in &done {
                    clean.push_str(&layer_line(*layer, heads));
                }
                write_atomically(&path, clean.as_bytes())?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&path, format!("{}\n", header.value).as_bytes())?;
            }
            Err(error) => return Err(io_error(&path)(error)),
        }
        Ok(Progress { path, done })
    }

    /// The finished layers.
    pub fn done(&self) -> &BTreeMap<usize, Vec<HeadChoice>> {
        &self.done
    }

    /// Records a finished layer (appended and flushed at once).
    pub fn record(&mut self, layer: usize, heads: Vec<HeadChoice>) -> Result<(), MinfError> {
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(io_error(&self.path))?;
        file.write_all(layer_line(layer, &heads).as_bytes()).map_err(io_error(&self.path))?;
        file.sync_data().map_err(io_error(&self.path))?;
        self.done.insert(layer, heads);
        Ok(())
    }
}

fn layer_line(layer: usize, heads: &[HeadChoice]) -> String {
    let heads: Vec<Value> = heads
        .iter()
        .map(|c| {
            let (a, b) = c.candidate.sizes();
            json!({
                "candidate": c.index,
                "pattern": c.candidate.file_pattern().as_str(),
                "sizes": [a, b],
                "score": c.score,
                "cost": c.cost,
                "budget": c.budget,
            })
        })
        .collect();
    format!("{}\n", json!({"layer": layer, "heads": heads}))
}

fn parse_layer_line(value: &Value, space: &SearchSpace) -> Option<(usize, Vec<HeadChoice>)> {
    let layer = usize::try_from(value.get("layer")?.as_u64()?).ok()?;
    let heads = value
        .get("heads")?
        .as_array()?
        .iter()
        .map(|head| {
            let index = usize::try_from(head.get("candidate")?.as_u64()?).ok()?;
            let number = |key: &str| match head.get(key)? {
                Value::Null => Some(f64::INFINITY),
                other => other.as_f64(),
            };
            Some(HeadChoice {
                index,
                candidate: *space.candidates.get(index)?,
                score: number("score")?,
                cost: number("cost")?,
                budget: number("budget")?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((layer, heads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FilePattern, HeadPattern, PatternConfig};

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn layer_names() {
        assert_eq!(layer_of("layer_0.safetensors"), Some(0));
        assert_eq!(layer_of("layer_017.safetensors"), Some(17));
        for name in
            ["layer_.safetensors", "layer_1.st", "layer_-1.safetensors", "Layer_1.safetensors", "layer_1a.safetensors"]
        {
            assert_eq!(layer_of(name), None, "{name}");
        }
    }

    #[test]
    fn inputs_are_one_directory_or_one_per_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        for l in [0, 1, 2] {
            touch(&one.join(format!("layer_{l:02}.safetensors")));
        }
        touch(&one.join("notes.txt"));
        let inputs = SearchInputs::discover(&one).unwrap();
        assert_eq!((inputs.layers(), inputs.prompts.clone()), (3, vec![one.clone()]));
        assert_eq!(inputs.files[2], vec![one.join("layer_02.safetensors")]);

        let many = dir.path().join("many");
        for prompt in ["b", "a"] {
            for l in [0, 1] {
                touch(&many.join(prompt).join(format!("layer_{l}.safetensors")));
            }
        }
        let inputs = SearchInputs::discover(&many).unwrap();
        assert_eq!(inputs.prompts, vec![many.join("a"), many.join("b")]);
        assert_eq!(inputs.files[1], vec![many.join("a/layer_1.safetensors"), many.join("b/layer_1.safetensors")]);

        touch(&many.join("c/layer_0.safetensors"));
        let message = SearchInputs::discover(&many).unwrap_err().to_string();
        assert!(message.contains("every prompt needs the same layers"), "{message}");
        let gap = dir.path().join("gap");
        touch(&gap.join("layer_0.safetensors"));
        touch(&gap.join("layer_2.safetensors"));
        let message = SearchInputs::discover(&gap).unwrap_err().to_string();
        assert!(message.contains("layer 1 is missing"), "{message}");
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let message = SearchInputs::discover(&empty).unwrap_err().to_string();
        assert!(message.starts_with("search: inputs ") && message.contains("no layer files"), "{message}");
        let twice = dir.path().join("twice");
        touch(&twice.join("layer_1.safetensors"));
        touch(&twice.join("layer_01.safetensors"));
        assert!(SearchInputs::discover(&twice).unwrap_err().to_string().contains("layer 1 has two files"));
    }

    fn choices() -> Vec<Vec<HeadChoice>> {
        let space = SearchSpace::default();
        let choice = |index: usize, score: f64| HeadChoice {
            index,
            candidate: space.candidates[index],
            score,
            cost: 10.0 * index as f64,
            budget: 80.0,
        };
        vec![
            vec![choice(0, 3.0), choice(6, 0.0), choice(7, 12.0)],
            vec![choice(8, 1.0), choice(12, 2.0), choice(3, 0.0)],
        ]
    }

    #[test]
    fn written_configs_read_back_as_searched() {
        let layers = choices();
        let text = config_json(&layers, Criterion::Mismatch);
        let config = PatternConfig::parse(&text, "searched.json", 3).unwrap();
        assert_eq!(config.layers().len(), 2);
        let head = config.head(0, 0).unwrap();
        assert_eq!(head.pattern, HeadPattern::AShape { n_init: 100, n_local: 800 });
        assert_eq!(head.score, 3.0);
        assert_eq!(config.head(0, 1).unwrap().pattern, HeadPattern::VerticalSlash { vertical: 1000, slash: 4096 });
        assert_eq!(config.head(0, 2).unwrap().file_pattern, FilePattern::BlockSparse);
        assert_eq!(config.head(1, 0).unwrap().pattern, HeadPattern::AShape { n_init: 1024, n_local: 4096 });
        assert_eq!(config.head(1, 1).unwrap().pattern, HeadPattern::VerticalSlash { vertical: 3000, slash: 200 });
        assert!(config.layers().iter().flatten().all(|h| !h.fallback));
        assert!(text.contains("\"0\": [\"stream_llm\",100,800,3]"), "{text}");
        // Recall scores stay fractional.
        let recall = config_json(&[vec![HeadChoice { score: 0.975_000_3, ..layers[0][0].clone() }]], Criterion::Recall);
        assert_eq!(PatternConfig::parse(&recall, "r.json", 1).unwrap().head(0, 0).unwrap().score, 0.975);
        // The same choices give the same text.
        assert_eq!(config_json(&layers, Criterion::Mismatch), text);
    }

    #[test]
    fn progress_resumes_only_the_same_search() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("in/layer_0.safetensors"));
        touch(&dir.path().join("in/layer_1.safetensors"));
        let inputs = SearchInputs::discover(dir.path().join("in")).unwrap();
        let space = SearchSpace::default();
        let header = SearchHeader::new(&inputs, &space, Criterion::Mismatch, 32, (3, 1, 128)).unwrap();
        let path = progress_path(&dir.path().join("out.json"));
        assert!(path.ends_with("out.json.progress"));
        let mut progress = Progress::open(&path, &header, &space).unwrap();
        assert!(progress.done().is_empty());
        let layers = choices();
        progress.record(1, layers[1].clone()).unwrap();
        // An interrupted append: a cut-short last line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"layer\": 0, \"hea");
        std::fs::write(&path, text).unwrap();
        let mut again = Progress::open(&path, &header, &space).unwrap();
        assert_eq!(again.done().keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(again.done()[&1], layers[1]);
        again.record(0, layers[0].clone()).unwrap();
        let third = Progress::open(&path, &header, &space).unwrap();
        assert_eq!(third.done().len(), 2);
        assert_eq!(third.done()[&0], layers[0]);

        let other = SearchHeader::new(&inputs, &space, Criterion::Recall, 32, (3, 1, 128)).unwrap();
        let message = Progress::open(&path, &other, &space).unwrap_err().to_string();
        assert!(message.contains("other inputs or settings"), "{message}");
        std::fs::write(dir.path().join("in/layer_1.safetensors"), b"longer").unwrap();
        let changed = SearchHeader::new(&inputs, &space, Criterion::Mismatch, 32, (3, 1, 128)).unwrap();
        assert!(Progress::open(&path, &changed, &space).is_err());
        // The same size with other values (a prompt dumped again into the same files) is another search.
        std::fs::write(dir.path().join("in/layer_1.safetensors"), b"x").unwrap();
        assert!(Progress::open(&path, &header, &space).is_ok());
        std::fs::write(dir.path().join("in/layer_1.safetensors"), b"y").unwrap();
        let message = Progress::open(&path, &header_again(&inputs, &space), &space).unwrap_err().to_string();
        assert!(message.contains("other inputs or settings"), "{message}");
    }

    fn header_again(inputs: &SearchInputs, space: &SearchSpace) -> SearchHeader {
        SearchHeader::new(inputs, space, Criterion::Mismatch, 32, (3, 1, 128)).unwrap()
    }

    #[test]
    fn content_samples_cover_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let size = 3 << 20;
        let mut bytes = vec![0u8; size];
        std::fs::write(&path, &bytes).unwrap();
        let before = content_sample_hash(&path, size as u64).unwrap();
        // A change near the end (inside the last piece) changes the hash; the first piece's bytes too.
        bytes[size - 10] = 1;
        std::fs::write(&path, &bytes).unwrap();
        let end_changed = content_sample_hash(&path, size as u64).unwrap();
        assert_ne!(before, end_changed);
        bytes[5] = 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_ne!(end_changed, content_sample_hash(&path, size as u64).unwrap());
        // Small and empty files are hashed whole.
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(content_sample_hash(&path, 3).unwrap(), content_sample_hash(&path, 3).unwrap());
        std::fs::write(&path, b"").unwrap();
        assert!(content_sample_hash(&path, 0).is_ok());
    }

    #[test]
    fn atomic_writes_replace_the_file_with_plain_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The mode a plain create gets under this process's umask, not a temporary file's 0600.
            let plain = dir.path().join("plain");
            std::fs::write(&plain, b"x").unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), mode(&plain));
        }
    }
}
