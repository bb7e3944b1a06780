//! Attention inputs for tests, examples and benchmarks: a seeded generator of queries, keys and
//! values with the structure real attention has, and safetensors I/O for real dumps.
//!
//! Uniform random Q/K give nearly uniform attention, so a sparse estimate of it has nothing to find
//! and goes nearly dense. [`StructuredInputs::generate`] plants what real heads show instead:
//!
//! - **local structure** (the main diagonal and its neighbours): every token has a smooth content
//!   vector (an AR(1) process over positions, correlation length
//!   [`InputSpec::correlation_length`]) shared by its query and key, so nearby tokens score high;
//! - **an attention sink**: the keys of the first [`InputSpec::sink_tokens`] tokens align with a
//!   direction every query of the KV head carries;
//! - **heavy columns** (verticals): [`InputSpec::heavy_columns`] keys per KV head align with that
//!   direction too, a little less strongly;
//! - **recency** (RoPE's long-term decay): a direction every query and key carries in the slower
//!   half of the content pairs ([`InputSpec::recency_logit`]), whose score the rotation alone makes
//!   fall off over hundreds to thousands of tokens;
//! - **repeated segments** (off-diagonal slashes): [`InputSpec::repeats`] copy a span's tokens
//!   later in the sequence, and an induction-style identity match makes query `dst + t` attend to
//!   key `src + t + 1`, a diagonal at offset [`Repeat::induction_offset`].
//!
//! Queries and keys are then rotated with a real rotary embedding (Llama's `rotate_half` layout,
//! pair `m` pairs dims `m` and `m + head_dim / 2` at frequency `base^(-2m / head_dim)`), so every
//! score depends on positions only through their distance. The head dimension is split by
//! frequency: the highest-frequency pairs carry the content (their rotation makes it local), the
//! next quarter of the pairs (low frequencies, which barely rotate across thousands of tokens)
//! carry the token identities that make repeats findable, and the lowest `max(1, head_dim / 64)`
//! pairs carry the sink/heavy direction, so sinks and heavy columns stay heavy at any distance.
//!
//! The knobs are expressed as scaled scores (logits after the `1/sqrt(head_dim)` softmax scale):
//! with the defaults a query gives its own key about [`InputSpec::local_logit`], the sink
//! [`InputSpec::sink_logit`], a heavy column [`InputSpec::heavy_logit`] and the key after an
//! earlier occurrence of itself [`InputSpec::induction_logit`], while unrelated keys spread with a
//! standard deviation of about 1.3 (head_dim 128). With the defaults at 2048 tokens, the last rows
//! put about a quarter of their mass on the sink, a quarter within 64 tokens of the diagonal, a
//! tenth or more on the heavy columns, a tenth or more on the repeat's diagonal and the rest on
//! the long tail (the tests hold these shares in ranges at 2048 and 16384 tokens): neither uniform
//! nor one-hot. Past 2048 tokens the planted logits grow by `ln(seq / 2048)`
//! ([`InputSpec::length_boost`]) so these shares hold at any length; with fixed logits the tail
//! (whose weight grows with the length) would take ~97% of the mass at 128K, far more diffuse than
//! the long-context attention MInference measured (its top 4096 of 128K keys hold ~96% of it). On
//! the CPU reference at 128K (two heads, seed 1) MInference's vertical-slash estimate with 1000
//! columns and 6096 diagonals keeps 16% of the last rows' mass with fixed logits, 66% with the
//! boost and 76% with the boost and the recency term. Still unlike a model: beyond the planted
//! ones the top diagonals scatter over the whole length (600 of 6096 lie within 8192 of the main
//! diagonal), so the converted index covers most keys: `examples/index_tiles.rs` (4 heads, seed 1)
//! counts 97% of the causal 64x64 tiles at 32K tokens, 80% at 128K and 66% at 256K, where the
//! issues' reference index of this size is ~10% dense at 128K (a band of ~6K diagonals plus the
//! columns is ~11%).
//!
//! The recency term's decay ends after a few thousand tokens: the last rows' mass per diagonal is
//! flat (about `e^-9` each, spread about 0.9 in its log) from 2K tokens on, so the picked
//! diagonals are noise. [`InputSpec::decay_logit`] (off by default) adds RoPE's long-term decay
//! out to the rotary base's scale: a direction every query and key shares in the slower half of
//! the non-anchor pairs, whose score falls about linearly in `ln(distance)`. (Spread evenly over
//! all of those pairs instead, the fast pairs' cosines make the score oscillate by about as much
//! as it falls per e-fold of distance whatever its size, and the index stays 56-63% dense at 128K
//! for logits 20-32.) It concentrates the picks, but only at logits that break the shares the
//! tests pin: the index density at 32K / 128K / 256K is 87% / 53% / 41% with `decay_logit` 8, 84%
//! / 41% / 31% with 12 and 74% / 21% / 12% with 32, while already at 4 (67% at 128K) the 16K
//! shares leave their ranges (sink and heavy ~0.05, local 0.51 on two heads), because the sink,
//! heavy columns and repeat sit `seq / 4` or more tokens back and lose the decay that the local
//! and nearby tail keys keep. Using it by default needs a length boost that depends on each planted
//! part's distance (the sink's would grow by the decay lost between 2048 and `seq` tokens), and
//! lower per-diagonal noise than the content, identity and their cross terms with the decay
//! direction give now (their spread, not the decay's oscillation, is what still scatters picks
//! with the slow-half decay).

use crate::error::MinfError;
use crate::reference::{parallel_map, random_normal, ReferenceShape, TestRng};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// Queries, keys and values on the host, f32, batch 1, contiguous: `q` is
/// `[1, seq, heads, head_dim]`, `k` and `v` are `[1, seq, kv_heads, head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostQkv {
    /// Tokens.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// `[1, seq, heads, head_dim]`.
    pub q: Vec<f32>,
    /// `[1, seq, kv_heads, head_dim]`.
    pub k: Vec<f32>,
    /// `[1, seq, kv_heads, head_dim]`.
    pub v: Vec<f32>,
}

impl HostQkv {
    /// The shape for [`crate::reference`] and [`crate::estimate`] (batch 1).
    pub fn shape(&self) -> ReferenceShape {
        ReferenceShape { batch: 1, seq: self.seq, heads: self.heads, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }
}

/// A span of `len` tokens starting at `src`, repeated at `dst` (`src < dst`, `dst + len <= seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    /// First token of the original span.
    pub src: usize,
    /// First token of the copy.
    pub dst: usize,
    /// Tokens copied.
    pub len: usize,
}

impl Repeat {
    /// The diagonal offset `i - j` the repeat creates: query `dst + t` attends to key `src + t + 1`,
    /// the token that followed its earlier occurrence (an induction head), so
    /// `dst - src - 1`.
    pub fn induction_offset(&self) -> usize {
        self.dst - self.src - 1
    }
}

/// What to generate; [`InputSpec::new`] fills in the defaults documented on each field.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// Tokens.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Head dimension (even, at least 8).
    pub head_dim: usize,
    /// Seed; the same spec always gives the same tensors.
    pub seed: u64,
    /// Rotary base: 500000 (Llama-3, default) or 10000 (Llama-2). With 10000, identities rotate
    /// enough over a few thousand tokens that long-distance repeats fade, as they do in such models.
    pub rope_base: f64,
    /// Scaled score of a query against its own key's content (default 7, plus [`InputSpec::length_boost`] past 2048 tokens); neighbours score less
    /// as content decorrelates and the rotation turns.
    pub local_logit: f64,
    /// Tokens over which content correlation falls by `1/e` (default 16).
    pub correlation_length: f64,
    /// Relative noise of each query head's content around its KV head's (default 0.3), so the
    /// query heads of a group differ.
    pub query_noise: f64,
    /// Sink tokens at the start (default 4, at most `seq`).
    pub sink_tokens: usize,
    /// Scaled score of every query against a sink key (default 7 plus the length boost).
    pub sink_logit: f64,
    /// Heavy key columns per KV head (default 4, fewer if the sequence is too short), at seeded positions after the sink and before
    /// the last quarter of the sequence ([`InputSpec::planted`] lists them).
    pub heavy_columns: usize,
    /// Scaled score of every query against a heavy key (default 6 plus the length boost).
    pub heavy_logit: f64,
    /// Repeated spans, applied in order (default: the last `seq / 8` tokens repeat the span at
    /// `seq / 4`, so the final queries, which the vertical-slash estimate reads, are in a copy).
    pub repeats: Vec<Repeat>,
    /// Scaled score of an induction match (default 6 plus the length boost): query `i` against key `j` when token
    /// `j - 1` has token `i`'s identity.
    pub induction_logit: f64,
    /// A needle (default none): one key that only the last queries attend to strongly.
    pub needle: Option<Needle>,
    /// Scaled score every query gives keys at distance 0 through a shared constant direction in
    /// the slower half of the content pairs (default 1): after the rotary embedding it falls off
    /// with distance over a few hundred to a few thousand tokens, the long-term decay RoPE models
    /// show, so the nearer diagonals outscore far ones.
    pub recency_logit: f64,
    /// Scaled score every query gives keys at distance 0 through a second shared constant
    /// direction, spread with equal weight (and seeded phases) over the slower half of the pairs
    /// the anchor does not use (default 0: off). The pair at frequency `f` stops contributing
    /// once `f * distance` passes about 1, and the pairs are evenly spaced in `ln f`, so the score
    /// falls roughly linearly in `ln(distance)`, from the logit at a few hundred tokens to about 0
    /// near `1 / f` of the slowest pair (~270K tokens with base 500000, head_dim 128). A model of
    /// the low-frequency mean component real queries and keys share. Not on by default: the
    /// values that make the vertical-slash estimate's diagonals realistic break the pinned shares
    /// (see the [module docs](self)).
    pub decay_logit: f64,
}

/// A planted needle: the key at `position` (in every KV head) scores `logit` (a scaled score)
/// against the last query and about as much against each of the last `queries` queries, at any
/// distance, and 0 against the others. It takes the lowest-frequency identity pair of the head
/// dimension for itself (so the generated tensors differ a little from the same spec without a
/// needle) and is pre-rotated so that the rotary embedding aligns it with the last queries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Needle {
    /// The needle key's position.
    pub position: usize,
    /// How many of the last queries attend to it (at least 1).
    pub queries: usize,
    /// Their scaled score against it.
    pub logit: f64,
}

impl InputSpec {
    /// A spec with the default knobs. The planted logits grow with `ln(seq / 2048)` past 2048
    /// tokens ([`length_boost`](Self::length_boost)), so the sink, local, heavy and repeat shares of
    /// the last rows stay what they are at 2048 tokens instead of drowning in a tail that grows with
    /// the length.
    pub fn new(seq: usize, heads: usize, kv_heads: usize, head_dim: usize, seed: u64) -> InputSpec {
        let len = seq / 8;
        let repeats = if len > 0 { vec![Repeat { src: seq / 4, dst: seq - len, len }] } else { Vec::new() };
        let boost = Self::length_boost(seq);
        let mut spec = InputSpec {
            seq,
            heads,
            kv_heads,
            head_dim,
            seed,
            rope_base: 500_000.0,
            local_logit: 7.0 + boost,
            correlation_length: 16.0,
            query_noise: 0.3,
            sink_tokens: 4,
            sink_logit: 7.0 + boost,
            heavy_columns: 4,
            heavy_logit: 6.0 + boost,
            repeats,
            induction_logit: 6.0 + boost,
            needle: None,
            recency_logit: 1.0,
            decay_logit: 0.0,
        };
        spec.sink_tokens = spec.sink_tokens.min(seq);
        spec.heavy_columns = spec.heavy_columns.min(spec.heavy_range().len());
        spec
    }

    /// What [`new`](Self::new) adds to each planted logit at `seq` tokens: `ln(seq / 2048)`, 0 up
    /// to 2048. The unrelated keys' total weight grows in proportion to the length; adding its log
    /// to the planted logits grows their weight in step.
    pub fn length_boost(seq: usize) -> f64 {
        (seq as f64 / 2048.0).ln().max(0.0)
    }

    fn validate(&self) -> Result<(), MinfError> {
        let bad = |message: String| Err(MinfError::Shape(format!("input spec: {message}")));
        if self.heads == 0 || self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
            return bad(format!("kv_heads {} must be positive and divide heads {}", self.kv_heads, self.heads));
        }
        if self.head_dim < 8 || self.head_dim % 2 != 0 {
            return bad(format!("head_dim {} must be even and at least 8", self.head_dim));
        }
        for (name, value) in [
            ("local_logit", self.local_logit),
            ("induction_logit", self.induction_logit),
            ("recency_logit", self.recency_logit),
            ("decay_logit", self.decay_logit),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return bad(format!("{name} {value} must be finite and non-negative"));
            }
        }
        for (name, value) in [("sink_logit", self.sink_logit), ("heavy_logit", self.heavy_logit)] {
            if !value.is_finite() {
                return bad(format!("{name} {value} must be finite"));
            }
        }
        if !(self.rope_base > 1.0 && self.rope_base.is_finite()) {
            return bad(format!("rope_base {} must be finite and above 1", self.rope_base));
        }
        if !(self.correlation_length > 0.0 && self.correlation_length.is_finite()) {
            return bad(format!("correlation_length {} must be finite and positive", self.correlation_length));
        }
        if !(self.query_noise >= 0.0 && self.query_noise.is_finite()) {
            return bad(format!("query_noise {} must be finite and non-negative", self.query_noise));
        }
        if self.sink_tokens > self.seq {
            return bad(format!("sink_tokens {} exceed seq {}", self.sink_tokens, self.seq));
        }
        if self.heavy_columns > self.heavy_range().len() {
            return bad(format!(
                "heavy_columns {} exceed the {} positions in {:?}",
                self.heavy_columns,
                self.heavy_range().len(),
                self.heavy_range()
            ));
        }
        if let Some(needle) = &self.needle {
            if needle.position >= self.seq || needle.queries == 0 || needle.queries > self.seq {
                return bad(format!("needle {needle:?} needs position < seq {} and 1 <= queries <= seq", self.seq));
            }
            if self.head_dim < 16 {
                return bad(format!("a needle needs head_dim >= 16 (got {})", self.head_dim));
            }
            if !needle.logit.is_finite() {
                return bad(format!("needle logit {} must be finite", needle.logit));
            }
        }
        for r in &self.repeats {
            if r.len == 0 || r.src >= r.dst || r.dst.checked_add(r.len).filter(|&end| end <= self.seq).is_none() {
                return bad(format!("repeat {r:?} needs len > 0, src < dst and dst + len <= seq {}", self.seq));
            }
        }
        Ok(())
    }

    /// Where heavy columns may go: after the sink, before the last quarter.
    fn heavy_range(&self) -> Range<usize> {
        self.sink_tokens..(self.seq - self.seq / 4).max(self.sink_tokens)
    }

    /// The planted structure: sink tokens, heavy columns per KV head and repeats.
    pub fn planted(&self) -> Result<Planted, MinfError> {
        self.validate()?;
        let range = self.heavy_range();
        let heavy = (0..self.kv_heads)
            .map(|g| {
                let mut rng = TestRng::new(stream(self.seed, 1, g));
                let mut columns: Vec<usize> = Vec::with_capacity(self.heavy_columns);
                while columns.len() < self.heavy_columns {
                    let column = range.start + rng.below(range.len());
                    if !columns.contains(&column) {
                        columns.push(column);
                    }
                }
                columns.sort_unstable();
                columns
            })
            .collect();
        Ok(Planted { sink: 0..self.sink_tokens, heavy, repeats: self.repeats.clone() })
    }
}

/// The structure [`StructuredInputs::generate`] plants for a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planted {
    /// Sink tokens.
    pub sink: Range<usize>,
    /// Heavy key columns of each KV head, ascending.
    pub heavy: Vec<Vec<usize>>,
    /// Repeated spans.
    pub repeats: Vec<Repeat>,
}

/// The generator of structured attention inputs (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct StructuredInputs;

/// A seed for stream `tag` of item `index`, so every part of the generation is independent.
fn stream(seed: u64, tag: u64, index: usize) -> u64 {
    let mut rng = TestRng::new(
        seed ^ tag.wrapping_mul(0xA076_1D64_78BD_642F) ^ (index as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB),
    );
    rng.next_u64()
}

/// Which rotary pairs carry what: `content` the highest frequencies, then `identity`, then
/// `anchor` the lowest.
#[derive(Debug, Clone)]
struct Subspaces {
    pairs: usize,
    content: Range<usize>,
    identity: Range<usize>,
    anchor: Range<usize>,
}

impl Subspaces {
    fn new(head_dim: usize) -> Subspaces {
        let pairs = head_dim / 2;
        let anchor = (pairs / 32).max(1);
        let identity = (pairs / 4).max(1);
        let content = pairs - anchor - identity;
        Subspaces {
            pairs,
            content: 0..content,
            identity: content..content + identity,
            anchor: content + identity..pairs,
        }
    }

    /// The slower half of the content pairs, which carries the recency direction.
    fn recency(&self) -> Range<usize> {
        self.content.start + self.content.len() / 2..self.content.end
    }

    /// The slower half of the pairs the anchor does not use (the slow content pairs and the
    /// identity pairs), which carry the long-range decay direction.
    fn decay(&self) -> Range<usize> {
        (self.content.start + self.identity.end) / 2..self.identity.end
    }

    /// Writes `scale * values` (two components per pair of `pairs`) into the unrotated `out`.
    fn put(&self, out: &mut [f64], pairs: &Range<usize>, values: &[f64], scale: f64) {
        for (m, pair) in pairs.clone().zip(values.chunks_exact(2)) {
            out[m] += scale * pair[0];
            out[m + self.pairs] += scale * pair[1];
        }
    }
}

/// The rotary frequency of each pair of a head of `head_dim`: `base^(-2m / head_dim)`.
fn rope_frequencies(base: f64, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2).map(|m| base.powf(-2.0 * m as f64 / head_dim as f64)).collect()
}

/// Rotates `x` (one head, `rotate_half` layout) to position `pos` with the pairs' `frequencies`
/// and stores it as f32.
fn rope(x: &[f64], pos: usize, frequencies: &[f64], out: &mut [f32]) {
    let pairs = x.len() / 2;
    for (m, frequency) in frequencies.iter().enumerate() {
        let angle = pos as f64 * frequency;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = (x[m], x[m + pairs]);
        out[m] = (a * cos - b * sin) as f32;
        out[m + pairs] = (b * cos + a * sin) as f32;
    }
}

impl StructuredInputs {
    /// Generates queries, keys and values for `spec` (deterministic in the spec).
    pub fn generate(spec: &InputSpec) -> Result<HostQkv, MinfError> {
        let planted = spec.planted()?;
        let InputSpec { seq, heads, kv_heads, head_dim: d, seed, .. } = *spec;
        let group = heads / kv_heads;
        let sub = Subspaces::new(d);
        let (content_dims, identity_dims, anchor_dims) =
            (2 * sub.content.len(), 2 * sub.identity.len(), 2 * sub.anchor.len());
        // Scales giving the documented scaled scores for unit-norm content, identity and anchor.
        let quarter = (d as f64).sqrt().sqrt();
        let content_scale = (spec.local_logit).sqrt() * quarter;
        let identity_scale = (spec.induction_logit).sqrt() * quarter;
        let recency_scale = (spec.recency_logit).sqrt() * quarter;
        let frequencies = rope_frequencies(spec.rope_base, d);
        // A needle takes the lowest-frequency identity pair for itself.
        let (identity_pairs, needle_pair) = match spec.needle {
            Some(_) => (sub.identity.start..sub.identity.end - 1, Some(sub.identity.end - 1)),
            None => (sub.identity.clone(), None),
        };
        let rho = (-1.0 / spec.correlation_length).exp();
        let innovation = (1.0 - rho * rho).sqrt();

        // Each KV head and its query heads are independent: generate them in parallel, each into
        // its own `[seq, d]` buffers, then interleave into the tensors' layouts.
        let groups: Vec<usize> = (0..kv_heads).collect();
        let generated = parallel_map(&groups, |&g| {
            let mut unrotated = vec![0.0f64; d];
            let mut k_g = vec![0.0f32; seq * d];
            let mut q_g = vec![0.0f32; group * seq * d];
            // Smooth content, unit norm on average: AR(1) per dimension.
            let noise = random_normal(seq * content_dims, stream(seed, 2, g));
            let mut content = vec![0.0f64; seq * content_dims];
            let norm = 1.0 / (content_dims.max(1) as f64).sqrt();
            for t in 0..seq {
                for e in 0..content_dims {
                    let fresh = noise[t * content_dims + e] as f64 * norm;
                    content[t * content_dims + e] =
                        if t == 0 { fresh } else { rho * content[(t - 1) * content_dims + e] + innovation * fresh };
                }
            }
            // Token identities (one extra for the token "before" position 0), unit norm on average.
            let norm = 1.0 / (identity_dims as f64).sqrt();
            let mut identity: Vec<f64> =
                random_normal((seq + 1) * identity_dims, stream(seed, 3, g)).iter().map(|x| *x as f64 * norm).collect();
            for r in &planted.repeats {
                for t in 0..r.len {
                    content.copy_within(
                        (r.src + t) * content_dims..(r.src + t + 1) * content_dims,
                        (r.dst + t) * content_dims,
                    );
                    let (from, to) = ((r.src + t + 1) * identity_dims, (r.dst + t + 1) * identity_dims);
                    identity.copy_within(from..from + identity_dims, to);
                }
            }
            // The recency direction: constant over positions in the slower half of the content
            // pairs, unit norm; the rotation alone makes its score fall off with distance.
            let recency_raw = random_normal(2 * sub.recency().len(), stream(seed, 7, g));
            let recency_norm =
                recency_raw.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            let recency: Vec<f64> = recency_raw.iter().map(|x| *x as f64 / recency_norm).collect();
            // The decay direction: constant over positions, the same norm in every pair of
            // `sub.decay()` with a seeded phase, unit norm; its score at distance `t` is
            // `decay_logit` times the mean of `cos(frequency * t)` over those pairs.
            let decay: Vec<f64> = {
                let mut rng = TestRng::new(stream(seed, 8, g));
                let per_pair = 1.0 / (sub.decay().len().max(1) as f64).sqrt();
                (0..sub.decay().len())
                    .flat_map(|_| {
                        let phase = std::f64::consts::TAU * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        [per_pair * phase.cos(), per_pair * phase.sin()]
                    })
                    .collect()
            };
            let decay_scale = spec.decay_logit.sqrt() * quarter;
            // The direction sinks and heavy columns share, unit norm.
            let anchor_raw = random_normal(anchor_dims, stream(seed, 4, g));
            let anchor_norm = anchor_raw.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            let anchor: Vec<f64> = anchor_raw.iter().map(|x| *x as f64 / anchor_norm).collect();

            for j in 0..seq {
                unrotated.fill(0.0);
                sub.put(&mut unrotated, &sub.content, &content[j * content_dims..][..content_dims], content_scale);
                sub.put(&mut unrotated, &sub.recency(), &recency, recency_scale);
                if spec.decay_logit > 0.0 {
                    sub.put(&mut unrotated, &sub.decay(), &decay, decay_scale);
                }
                // Key j carries the identity of token j - 1 (slot j of `identity`; slot t + 1 is token t).
                sub.put(
                    &mut unrotated,
                    &identity_pairs,
                    &identity[j * identity_dims..][..identity_dims],
                    identity_scale,
                );
                let anchor_logit = if planted.sink.contains(&j) {
                    spec.sink_logit
                } else if planted.heavy[g].binary_search(&j).is_ok() {
                    spec.heavy_logit
                } else {
                    0.0
                };
                sub.put(&mut unrotated, &sub.anchor, &anchor, anchor_logit * quarter);
                if let (Some(needle), Some(m)) = (spec.needle.filter(|n| n.position == j), needle_pair) {
                    // Pre-rotated so that, after both rotations, it aligns with the last query's.
                    let angle = (seq - 1 - j) as f64 * frequencies[m];
                    unrotated[m] += needle.logit * quarter * angle.cos();
                    unrotated[m + sub.pairs] += needle.logit * quarter * angle.sin();
                }
                rope(&unrotated, j, &frequencies, &mut k_g[j * d..][..d]);
            }
            for h in g * group..(g + 1) * group {
                let jitter = random_normal(seq * content_dims, stream(seed, 5, h));
                let norm = spec.query_noise / (content_dims.max(1) as f64).sqrt();
                let mut noisy = vec![0.0f64; content_dims];
                for i in 0..seq {
                    for (e, x) in noisy.iter_mut().enumerate() {
                        *x = content[i * content_dims + e] + norm * jitter[i * content_dims + e] as f64;
                    }
                    unrotated.fill(0.0);
                    sub.put(&mut unrotated, &sub.content, &noisy, content_scale);
                    sub.put(&mut unrotated, &sub.recency(), &recency, recency_scale);
                    if spec.decay_logit > 0.0 {
                        sub.put(&mut unrotated, &sub.decay(), &decay, decay_scale);
                    }
                    sub.put(
                        &mut unrotated,
                        &identity_pairs,
                        &identity[(i + 1) * identity_dims..][..identity_dims],
                        identity_scale,
                    );
                    sub.put(&mut unrotated, &sub.anchor, &anchor, quarter);
                    if let (Some(needle), Some(m)) = (spec.needle, needle_pair) {
                        if i + needle.queries >= seq {
                            unrotated[m] += quarter;
                        }
                    }
                    rope(&unrotated, i, &frequencies, &mut q_g[((h - g * group) * seq + i) * d..][..d]);
                }
            }
            (k_g, q_g)
        });
        let mut q = vec![0.0f32; seq * heads * d];
        let mut k = vec![0.0f32; seq * kv_heads * d];
        for (g, (k_g, q_g)) in generated.iter().enumerate() {
            for t in 0..seq {
                k[(t * kv_heads + g) * d..][..d].copy_from_slice(&k_g[t * d..][..d]);
                for local in 0..group {
                    q[(t * heads + g * group + local) * d..][..d].copy_from_slice(&q_g[(local * seq + t) * d..][..d]);
                }
            }
        }
        let v = random_normal(seq * kv_heads * d, stream(seed, 6, 0));
        Ok(HostQkv { seq, heads, kv_heads, head_dim: d, q, k, v })
    }
}

/// How a 4-D tensor in a safetensors file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileLayout {
    /// `[1, seq, heads, dim]`.
    Bshd,
    /// `[1, heads, seq, dim]`.
    Bhsd,
}

/// A tensor read from a file, as f32 with its shape.
struct FileTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn read_tensor(
    file: &SafeTensors<'_>,
    name: &str,
    err: &impl Fn(String) -> MinfError,
) -> Result<FileTensor, MinfError> {
    let view = file.tensor(name).map_err(|e| err(format!("tensor `{name}`: {e}")))?;
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(err(format!("tensor `{name}` is {other:?}; minf reads F32, BF16 and F16"))),
    };
    Ok(FileTensor { shape: view.shape().to_vec(), data })
}

/// Reads tensors named `q`, `k` and `v` (F32, BF16 or F16) from a safetensors file.
///
/// Accepted shapes (all three of the same rank, `k` and `v` equal, the same `seq` and `dim`, and
/// `kv_heads` dividing `heads`):
///
/// - `[seq, heads, dim]`;
/// - `[1, seq, heads, dim]` or `[1, heads, seq, dim]`. The file's `__metadata__` entry `layout`
///   (`"bshd"` or `"bhsd"`, as [`save_safetensors`] writes) decides; without it, the axis `q` and
///   `k` share is the sequence when exactly one axis differs (GQA), and otherwise the tensors are
///   read as `[1, heads, seq, dim]`, the layout of PyTorch attention modules (and of MInference).
///
/// The result is converted to f32 `[1, seq, heads, dim]`.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HostQkv, MinfError> {
    let path = path.as_ref();
    let err = |message: String| MinfError::Safetensors { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|source| MinfError::Io { path: path.to_path_buf(), source })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let declared = match metadata.metadata().as_ref().and_then(|m| m.get("layout")) {
        None => None,
        Some(layout) if layout == "bshd" => Some(FileLayout::Bshd),
        Some(layout) if layout == "bhsd" => Some(FileLayout::Bhsd),
        Some(other) => return Err(err(format!("metadata layout `{other}` is neither `bshd` nor `bhsd`"))),
    };
    let [q, k, v] = [read_tensor(&file, "q", &err)?, read_tensor(&file, "k", &err)?, read_tensor(&file, "v", &err)?];
    if k.shape != v.shape {
        return Err(err(format!("k has shape {:?} but v has {:?}", k.shape, v.shape)));
    }
    // Normalise to (layout, seq, heads, dim) per tensor.
    let dims = |t: &FileTensor, layout: FileLayout| -> Result<[usize; 3], MinfError> {
        match (t.shape.as_slice(), layout) {
            ([seq, heads, dim], _)
            | ([1, seq, heads, dim], FileLayout::Bshd)
            | ([1, heads, seq, dim], FileLayout::Bhsd) => Ok([*seq, *heads, *dim]),
            (shape, _) => Err(err(format!(
                "shape {shape:?}: expected [seq, heads, dim], [1, seq, heads, dim] or [1, heads, seq, dim]"
            ))),
        }
    };
    let layout = match (declared, q.shape.as_slice(), k.shape.as_slice()) {
        (Some(layout), _, _) => layout,
        (None, [_, q1, q2, _], [_, k1, k2, _]) if q1 == k1 && q2 != k2 => FileLayout::Bshd,
        _ => FileLayout::Bhsd,
    };
    if q.shape.len() != k.shape.len() {
        return Err(err(format!("q has shape {:?} but k has {:?}: ranks differ", q.shape, k.shape)));
    }
    let [seq, heads, head_dim] = dims(&q, layout)?;
    let [kv_seq, kv_heads, kv_dim] = dims(&k, layout)?;
    if kv_seq != seq || kv_dim != head_dim || heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(err(format!(
            "q is (seq {seq}, heads {heads}, dim {head_dim}) and k/v (seq {kv_seq}, heads {kv_heads}, dim {kv_dim}): \
             seq and dim must match and kv heads must divide heads"
        )));
    }
    let to_bshd = |t: FileTensor, heads: usize| -> Vec<f32> {
        if t.shape.len() == 3 || layout == FileLayout::Bshd {
            return t.data;
        }
        let mut out = vec![0.0f32; t.data.len()];
        for h in 0..heads {
            for s in 0..seq {
                out[(s * heads + h) * head_dim..][..head_dim]
                    .copy_from_slice(&t.data[(h * seq + s) * head_dim..][..head_dim]);
            }
        }
        out
    };
    Ok(HostQkv {
        seq,
        heads,
        kv_heads,
        head_dim,
        q: to_bshd(q, heads),
        k: to_bshd(k, kv_heads),
        v: to_bshd(v, kv_heads),
    })
}

/// Writes `qkv` as f32 tensors `q`, `k`, `v` of shape `[1, seq, heads, dim]` with metadata
/// `layout = "bshd"`, which [`load_safetensors`] reads back exactly.
pub fn save_safetensors(qkv: &HostQkv, path: impl AsRef<Path>) -> Result<(), MinfError> {
    let path = path.as_ref();
    let err = |message: String| MinfError::Safetensors { path: path.to_path_buf(), message };
    let shape = qkv.shape();
    let expected = [("q", &qkv.q, shape.heads), ("k", &qkv.k, shape.kv_heads), ("v", &qkv.v, shape.kv_heads)];
    let mut bytes: Vec<(&str, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, data, heads) in expected {
        let dims = vec![1, qkv.seq, heads, qkv.head_dim];
        if data.len() != dims.iter().product::<usize>() {
            return Err(err(format!(
                "tensor `{name}` has {} elements, its shape {dims:?} needs {}",
                data.len(),
                dims.iter().product::<usize>()
            )));
        }
        bytes.push((name, dims, data.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let mut views = Vec::new();
    for (name, dims, data) in &bytes {
        views.push((
            *name,
            safetensors::tensor::TensorView::new(Dtype::F32, dims.clone(), data).map_err(|e| err(e.to_string()))?,
        ));
    }
    let metadata = HashMap::from([("layout".to_string(), "bshd".to_string())]);
    let serialized = safetensors::serialize(views, Some(metadata)).map_err(|e| err(e.to_string()))?;
    std::fs::write(path, serialized).map_err(|source| MinfError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scaled score of query `i` (head `h`) against key `j` (its KV head).
    fn logit(qkv: &HostQkv, h: usize, i: usize, j: usize) -> f64 {
        let d = qkv.head_dim;
        let g = h / (qkv.heads / qkv.kv_heads);
        let q = &qkv.q[(i * qkv.heads + h) * d..][..d];
        let k = &qkv.k[(j * qkv.kv_heads + g) * d..][..d];
        q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt()
    }

    #[test]
    fn generation_is_seeded_and_shaped() {
        let spec = InputSpec::new(300, 4, 2, 64, 9);
        let a = StructuredInputs::generate(&spec).unwrap();
        assert_eq!(a, StructuredInputs::generate(&spec).unwrap());
        assert_eq!((a.q.len(), a.k.len(), a.v.len()), (300 * 4 * 64, 300 * 2 * 64, 300 * 2 * 64));
        assert!(a.q.iter().chain(&a.k).chain(&a.v).all(|x| x.is_finite()));
        let b = StructuredInputs::generate(&InputSpec { seed: 10, ..spec.clone() }).unwrap();
        assert_ne!(a.q, b.q);
        let planted = spec.planted().unwrap();
        assert_eq!(planted.sink, 0..4);
        for columns in &planted.heavy {
            assert_eq!(columns.len(), 4);
            assert!(columns.windows(2).all(|w| w[0] < w[1]), "{columns:?}");
            assert!(columns.iter().all(|&c| (4..225).contains(&c)), "{columns:?}");
        }
        assert_eq!(planted.repeats, vec![Repeat { src: 75, dst: 263, len: 37 }]);
        assert_eq!(planted.repeats[0].induction_offset(), 187);
    }

    /// `spec` with every planted part, the recency term and the query noise off (the decay is off
    /// by default), so a test can turn on one part at a time.
    fn silent(spec: InputSpec) -> InputSpec {
        InputSpec {
            local_logit: 0.0,
            induction_logit: 0.0,
            sink_logit: 0.0,
            heavy_logit: 0.0,
            query_noise: 0.0,
            recency_logit: 0.0,
            ..spec
        }
    }

    #[test]
    fn each_planted_part_scores_its_logit_at_any_distance() {
        // One part at a time, so each score is exactly that part's.
        let base = silent(InputSpec::new(2048, 2, 1, 128, 3));
        let sink = StructuredInputs::generate(&InputSpec { sink_logit: 7.0, ..base.clone() }).unwrap();
        for i in [0, 5, 700, 2047] {
            for j in 0..4 {
                let got = logit(&sink, 1, i, j);
                assert!((got - 7.0).abs() < 0.05, "sink ({i}, {j}): {got}");
            }
            assert!(logit(&sink, 1, i, 4).abs() < 1e-9);
        }
        // The needle: only the last 64 queries see it, at any distance.
        let needle = Needle { position: 100, queries: 64, logit: 9.0 };
        let planted = StructuredInputs::generate(&InputSpec { needle: Some(needle), ..base.clone() }).unwrap();
        for i in [1984, 2000, 2047] {
            let got = logit(&planted, 1, i, 100);
            assert!((got - 9.0).abs() < 0.05, "needle seen by query {i}: {got}");
        }
        for i in [100, 700, 1983] {
            assert!(logit(&planted, 1, i, 100).abs() < 1e-6, "needle seen by query {i}");
        }
        assert!(logit(&planted, 1, 2047, 101).abs() < 1e-9);
        let bad = InputSpec { needle: Some(Needle { position: 2048, ..needle }), ..base.clone() };
        assert!(StructuredInputs::generate(&bad).is_err());
        let heavy = StructuredInputs::generate(&InputSpec { heavy_logit: 6.0, ..base.clone() }).unwrap();
        let column = base.planted().unwrap().heavy[0][0];
        assert!((logit(&heavy, 0, 2047, column) - 6.0).abs() < 0.05);
        assert!(logit(&heavy, 0, 2047, 0).abs() < 1e-9);

        // Induction: query dst + t meets key src + t + 1 at about the logit (rotation shrinks it a
        // little); unrelated pairs spread around 0.
        let induction = StructuredInputs::generate(&InputSpec { induction_logit: 6.0, ..base.clone() }).unwrap();
        let r = base.repeats[0];
        let matched: f64 =
            (0..r.len).map(|t| logit(&induction, 0, r.dst + t, r.src + t + 1)).sum::<f64>() / r.len as f64;
        assert!(matched > 5.0 && matched < 6.5, "induction {matched}");
        let unrelated: f64 =
            (0..r.len).map(|t| logit(&induction, 0, r.dst + t, r.src + t + 7)).sum::<f64>() / r.len as f64;
        assert!(unrelated.abs() < 0.5, "unrelated {unrelated}");

        // Content: a token's own key scores about the logit, far keys about 0, and the score
        // decays with distance.
        let local = StructuredInputs::generate(&InputSpec { local_logit: 7.0, ..base }).unwrap();
        let mean_at = |offset: usize| (1000..1500).map(|i| logit(&local, 0, i, i - offset)).sum::<f64>() / 500.0;
        let (own, near, far) = (mean_at(0), mean_at(4), mean_at(400));
        assert!(own > 6.0 && own < 8.0, "own {own}");
        assert!(near > 1.0 && near < own, "near {near}");
        assert!(far.abs() < 0.5, "far {far}");
    }

    #[test]
    fn decay_falls_off_with_log_distance() {
        // The decay direction alone: its score is exactly the logit times the mean cosine of the
        // rotation over its pairs.
        let spec = InputSpec { decay_logit: 8.0, ..silent(InputSpec::new(16384, 1, 1, 128, 3)) };
        let qkv = StructuredInputs::generate(&spec).unwrap();
        let pairs = Subspaces::new(128).decay();
        let frequencies = rope_frequencies(spec.rope_base, 128);
        let expected =
            |t: usize| 8.0 * pairs.clone().map(|m| (frequencies[m] * t as f64).cos()).sum::<f64>() / pairs.len() as f64;
        let at = |t: usize| logit(&qkv, 0, 16383, 16383 - t);
        for t in [0, 64, 600, 4096, 8192, 16000] {
            assert!((at(t) - expected(t)).abs() < 0.01, "distance {t}: {} vs {}", at(t), expected(t));
        }
        // Flat over the first hundreds of tokens, then falling about linearly in ln(distance).
        assert!(at(0) > 7.99 && at(600) > 7.5, "{} {}", at(0), at(600));
        assert!(at(4096) > 4.5 && at(4096) < 5.2, "{}", at(4096));
        assert!(at(16000) > 2.3 && at(16000) < 3.0, "{}", at(16000));
        // Off, it changes nothing.
        let off = StructuredInputs::generate(&InputSpec { decay_logit: 0.0, ..spec.clone() }).unwrap();
        assert!(logit(&off, 0, 16383, 16383).abs() < 1e-9);
    }

    #[test]
    fn bad_specs_are_errors() {
        let ok = InputSpec::new(256, 4, 2, 64, 1);
        let bad = [
            InputSpec { kv_heads: 3, ..ok.clone() },
            InputSpec { kv_heads: 0, ..ok.clone() },
            InputSpec { head_dim: 63, ..ok.clone() },
            InputSpec { head_dim: 6, ..ok.clone() },
            InputSpec { rope_base: 1.0, ..ok.clone() },
            InputSpec { local_logit: -1.0, ..ok.clone() },
            InputSpec { decay_logit: -1.0, ..ok.clone() },
            InputSpec { sink_logit: f64::NAN, ..ok.clone() },
            InputSpec { correlation_length: 0.0, ..ok.clone() },
            InputSpec { sink_tokens: 257, ..ok.clone() },
            InputSpec { heavy_columns: 1000, ..ok.clone() },
            InputSpec { repeats: vec![Repeat { src: 10, dst: 10, len: 4 }], ..ok.clone() },
            InputSpec { repeats: vec![Repeat { src: 10, dst: 250, len: 7 }], ..ok.clone() },
            InputSpec { repeats: vec![Repeat { src: 10, dst: 20, len: 0 }], ..ok.clone() },
        ];
        for spec in bad {
            assert!(matches!(StructuredInputs::generate(&spec), Err(MinfError::Shape(_))), "{spec:?}");
        }
        // Tiny sequences shrink the defaults instead of failing.
        for seq in [0, 1, 5, 9] {
            let qkv = StructuredInputs::generate(&InputSpec::new(seq, 2, 1, 8, 1)).unwrap();
            assert_eq!(qkv.q.len(), seq * 2 * 8);
        }
    }

    /// A tensor to write: name, dtype, shape, little-endian bytes.
    type Raw<'a> = (&'a str, Dtype, Vec<usize>, Vec<u8>);

    fn write(path: &Path, tensors: &[Raw<'_>], layout: Option<&str>) {
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (*name, safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
            })
            .collect();
        let metadata = layout.map(|l| HashMap::from([("layout".to_string(), l.to_string())]));
        std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
    }

    /// `x` as `[1, heads, seq, dim]` from `[1, seq, heads, dim]`.
    fn bhsd(x: &[f32], seq: usize, heads: usize, dim: usize) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for s in 0..seq {
            for h in 0..heads {
                out[(h * seq + s) * dim..][..dim].copy_from_slice(&x[(s * heads + h) * dim..][..dim]);
            }
        }
        out
    }

    #[test]
    fn safetensors_round_trip_and_conversions() {
        let dir = tempfile::tempdir().unwrap();
        let qkv = StructuredInputs::generate(&InputSpec::new(40, 4, 2, 8, 5)).unwrap();
        let path = dir.path().join("qkv.safetensors");
        save_safetensors(&qkv, &path).unwrap();
        assert_eq!(load_safetensors(&path).unwrap(), qkv);

        let f32s = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let bf16s = |x: &[f32]| x.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>();
        let f16s = |x: &[f32]| x.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>();
        let rounded = |x: &[f32], f: fn(f32) -> f32| x.iter().map(|v| f(*v)).collect::<Vec<f32>>();
        let via_bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
        let via_f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let (s, h, g, d) = (40, 4, 2, 8);

        // [1, heads, seq, dim] without metadata, told apart by GQA; bf16 q, f16 k/v.
        write(
            &path,
            &[
                ("q", Dtype::BF16, vec![1, h, s, d], bf16s(&bhsd(&qkv.q, s, h, d))),
                ("k", Dtype::F16, vec![1, g, s, d], f16s(&bhsd(&qkv.k, s, g, d))),
                ("v", Dtype::F16, vec![1, g, s, d], f16s(&bhsd(&qkv.v, s, g, d))),
            ],
            None,
        );
        let got = load_safetensors(&path).unwrap();
        assert_eq!((got.seq, got.heads, got.kv_heads, got.head_dim), (s, h, g, d));
        assert_eq!(got.q, rounded(&qkv.q, via_bf16));
        assert_eq!(got.k, rounded(&qkv.k, via_f16));
        assert_eq!(got.v, rounded(&qkv.v, via_f16));

        // [1, seq, heads, dim] without metadata (GQA tells), and [seq, heads, dim].
        for shape in [vec![1, s], vec![s]] {
            let with = |heads: usize| [shape.clone(), vec![heads, d]].concat();
            write(
                &path,
                &[
                    ("q", Dtype::F32, with(h), f32s(&qkv.q)),
                    ("k", Dtype::F32, with(g), f32s(&qkv.k)),
                    ("v", Dtype::F32, with(g), f32s(&qkv.v)),
                ],
                None,
            );
            assert_eq!(load_safetensors(&path).unwrap(), qkv, "{shape:?}");
        }

        // Without GQA a 4-D file is [1, heads, seq, dim] unless its metadata says otherwise.
        let mha = StructuredInputs::generate(&InputSpec::new(16, 2, 2, 8, 6)).unwrap();
        let tensors = |x: &HostQkv| {
            [("q", &x.q), ("k", &x.k), ("v", &x.v)].map(|(n, t)| (n, Dtype::F32, vec![1, 16, 2, 8], f32s(t)))
        };
        write(&path, &tensors(&mha), Some("bshd"));
        assert_eq!(load_safetensors(&path).unwrap(), mha);
        write(&path, &tensors(&mha), None);
        let guessed = load_safetensors(&path).unwrap();
        assert_eq!((guessed.seq, guessed.heads), (2, 16));
        assert_eq!(guessed.q, bhsd(&mha.q, 16, 2, 8));
    }

    #[test]
    fn malformed_safetensors_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let f32s = |n: usize| vec![0u8; n * 4];
        let cases: Vec<(Vec<Raw<'_>>, Option<&str>, &str)> = vec![
            (vec![("q", Dtype::F32, vec![2, 1, 8], f32s(16)), ("k", Dtype::F32, vec![2, 1, 8], f32s(16))], None, "`v`"),
            (
                vec![
                    ("q", Dtype::I32, vec![2, 1, 8], f32s(16)),
                    ("k", Dtype::F32, vec![2, 1, 8], f32s(16)),
                    ("v", Dtype::F32, vec![2, 1, 8], f32s(16)),
                ],
                None,
                "I32",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![2, 3, 8], f32s(48)),
                    ("k", Dtype::F32, vec![2, 2, 8], f32s(32)),
                    ("v", Dtype::F32, vec![2, 2, 8], f32s(32)),
                ],
                None,
                "divide",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![2, 1, 8], f32s(16)),
                    ("k", Dtype::F32, vec![2, 1, 8], f32s(16)),
                    ("v", Dtype::F32, vec![3, 1, 8], f32s(24)),
                ],
                None,
                "v has",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![2, 2, 1, 8], f32s(32)),
                    ("k", Dtype::F32, vec![2, 2, 1, 8], f32s(32)),
                    ("v", Dtype::F32, vec![2, 2, 1, 8], f32s(32)),
                ],
                None,
                "expected",
            ),
            (
                vec![
                    ("q", Dtype::F32, vec![1, 2, 1, 8], f32s(16)),
                    ("k", Dtype::F32, vec![1, 2, 1, 8], f32s(16)),
                    ("v", Dtype::F32, vec![1, 2, 1, 8], f32s(16)),
                ],
                Some("sbhd"),
                "sbhd",
            ),
        ];
        for (tensors, layout, needle) in cases {
            write(&path, &tensors, layout);
            let message = load_safetensors(&path).unwrap_err().to_string();
            assert!(message.contains("bad.safetensors") && message.contains(needle), "{message}");
        }
        std::fs::write(&path, b"not a safetensors file").unwrap();
        assert!(matches!(load_safetensors(&path), Err(MinfError::Safetensors { .. })));
        assert!(matches!(load_safetensors(dir.path().join("missing")), Err(MinfError::Io { .. })));
        let wrong = HostQkv { q: vec![0.0; 3], ..StructuredInputs::generate(&InputSpec::new(4, 1, 1, 8, 1)).unwrap() };
        assert!(save_safetensors(&wrong, &path).unwrap_err().to_string().contains("`q`"));
    }
}
