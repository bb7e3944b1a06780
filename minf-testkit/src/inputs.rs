//! Attention inputs for tests, examples and benchmarks: a seeded generator of queries, keys and
//! values with the structure real attention has. (Real Q/K/V dumps are read with
//! [`minf_runtime::load_safetensors`].)
//!
//! Uniform random Q/K give nearly uniform attention, so a sparse estimate of it has nothing to find
//! and goes nearly dense. [`StructuredInputs::generate`] plants what real heads show instead:
//!
//! - **local structure** (the main diagonal and its neighbours): every token has a smooth content
//!   vector (an AR(1) process over positions, correlation length
//!   [`InputSpec::correlation_length`]) shared by its query and key, so nearby tokens score high;
//! - **long-range decay** (RoPE's long-term decay): a direction every query and key carries in
//!   pairs of its own ([`InputSpec::decay_logit`]), whose score falls about linearly in
//!   `ln(distance)` from 2K to 64K tokens, so nearer keys outscore far ones at every distance;
//! - **an attention sink**: the keys of the first [`InputSpec::sink_tokens`] tokens align with a
//!   direction every query of the KV head carries;
//! - **heavy columns** (verticals): [`InputSpec::heavy_columns`] keys per KV head align with that
//!   direction too, a little less strongly;
//! - **recency**: a direction every query and key carries in the slower half of the content pairs
//!   ([`InputSpec::recency_logit`]), whose score the rotation alone makes fall off over hundreds
//!   to thousands of tokens;
//! - **repeated segments** (off-diagonal slashes): [`InputSpec::repeats`] copy a span's tokens
//!   later in the sequence, and an induction-style identity match makes query `dst + t` attend to
//!   key `src + t + 1`, a diagonal at offset [`Repeat::induction_offset`].
//!
//! Queries and keys are then rotated with a real rotary embedding (Llama's `rotate_half` layout,
//! pair `m` pairs dims `m` and `m + head_dim / 2` at frequency `base^(-2m / head_dim)`), so every
//! score depends on positions only through their distance. The head dimension is split by
//! frequency: the highest-frequency pairs carry the content (their rotation makes it local), every
//! other pair whose period lies between 2K and 64K tokens carries the decay, the next quarter of
//! the pairs (low frequencies, which barely rotate across thousands of tokens) carry the token
//! identities that make repeats findable, and the lowest `max(1, head_dim / 64)` pairs carry the
//! sink/heavy direction. The default rotary base grows with the length (`max(500000, 4 * seq)`,
//! as long-context fine-tunes raise it), so even the slowest pair turns by less than a third of a
//! radian across the sequence and sinks and heavy columns stay heavy at any distance.
//!
//! The knobs are expressed as scaled scores (logits after the `1/sqrt(head_dim)` softmax scale):
//! with the defaults a query gives its own key about [`InputSpec::local_logit`] plus the decay, the
//! sink [`InputSpec::sink_logit`], a heavy column [`InputSpec::heavy_logit`] and the key after an
//! earlier occurrence of itself [`InputSpec::induction_logit`], each of these three *plus what the
//! decay gives a key at distance 0*: planted keys (and a needle) do not carry the decay direction
//! and get its value at distance 0 added to their planted score instead, and the identity term is
//! raised by what the decay takes at the first repeat's offset, so planted parts keep their weight
//! at any distance, as sinks and retrieval heads do in real models. Unrelated far keys spread with a standard
//! deviation of about 1 around 0. With the defaults the last rows put 12-37% of their mass on the
//! sink, 13-43% within 64 tokens of the diagonal, 10-26% on the heavy columns, 6-13% on the
//! repeat's diagonal and the rest on the nearer tail (four heads, seed 11; the
//! tests hold these shares in ranges at 2048 and 16384 tokens). Past 64K tokens the decay grows by
//! `ln(seq / 65536)` ([`InputSpec::length_boost`]), so the far tail, whose weight grows with the
//! length, keeps about the same share.
//!
//! What this gives, measured by `examples/inputs_realism.rs` (the float64 CPU reference, one
//! head, seed 1; the last 64 rows, which the vertical-slash estimate reads, unless said):
//!
//! | tokens | top 4096 keys' share of the mass | (1000, 6096): tiles / mass kept | (100, 800) | (3500, 100) |
//! |---|---|---|---|---|
//! | 32K | 98.0% | 58.8% / 97.4% | 21.3% / 88.7% | 2.7% / 95.8% |
//! | 128K | 96.1% | 13.8% / 96.0% | 6.2% / 76.1% | 0.5% / 91.8% |
//! | 256K | 96.7% | 7.9% / 96.7% | 3.1% / 78.8% | 0.2% / 93.3% |
//! | 1M | 91.2% | 3.3% / 89.0% | 0.7% / 78.8% | 0.1% / 86.8% |
//!
//! Rows in the middle of the sequence keep 81-97% with (1000, 6096) but 52-73% with the two small
//! sizes: their mass a few hundred to a few thousand tokens back is left out by 100 or 800
//! diagonals and not covered by the columns the last rows chose.
//!
//! "Tiles" is the share of the causal 64x64 tiles the converted index covers (a band of 6096
//! diagonals plus 1000 columns is ~11% at 128K). MInference reports that the top 4096 of 128K keys
//! hold ~96% of a row's mass in real models; the default decay logit matches it (8 gives 99% and a
//! (1000, 6096) index of 12.6% at 128K). [`InputSpec::flat_tail`], the same generator without the
//! decay, gives 94.5% / 82.1% / 82.9% / 60.5% for the top 4096 keys, and its (1000, 6096) index
//! covers 97.1% / 79.7% / 65.7% / 30.8% of the tiles while keeping only 87% / 65% / 64% / 35% of
//! the mass (at 1M, with the base 500000, its sink direction turns past a right angle and rows in
//! the middle keep 8%).
//!
//! Why the decay has rotary pairs of its own: without a decay the last rows' mass per far diagonal
//! is flat, and the estimate's diagonals beyond the planted ones are noise scattered over the whole
//! length, hence the flat tail's dense indices. A decay sharing its pairs with the content and
//! identities adds cross terms whose per-diagonal noise scatters the picks as much (21% of the
//! tiles at 128K even at logit 32), and a decay in faster pairs (periods from 256 tokens) makes the
//! score oscillate along the distance by about as much as it falls per e-fold (16-37% of the tiles
//! at 128K). Decay pairs of their own, slow enough to vary smoothly, give the densities above.

use crate::reference::{parallel_map, random_normal, TestRng};
use minf_runtime::{HostQkv, MinfError};
use std::ops::Range;

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
    /// Rotary base: default `max(500000, 4 * seq)` (Llama-3's 500000, raised for longer contexts
    /// as long-context fine-tunes do, so the sink direction turns by at most a third of a radian),
    /// or e.g. 10000 (Llama-2), with which identities rotate enough over a few thousand tokens that
    /// long-distance repeats fade, as they do in such models.
    pub rope_base: f64,
    /// Scaled score of a query against its own key's content (default 7); neighbours score less
    /// as content decorrelates and the rotation turns.
    pub local_logit: f64,
    /// Tokens over which content correlation falls by `1/e` (default 16).
    pub correlation_length: f64,
    /// Relative noise of each query head's content around its KV head's (default 0.3), so the
    /// query heads of a group differ.
    pub query_noise: f64,
    /// Sink tokens at the start (default 4, at most `seq`).
    pub sink_tokens: usize,
    /// Scaled score of every query against a sink key beyond the decay's value at distance 0
    /// (default 7).
    pub sink_logit: f64,
    /// Heavy key columns per KV head (default 4, fewer if the sequence is too short), at seeded positions after the sink and before
    /// the last quarter of the sequence ([`InputSpec::planted`] lists them).
    pub heavy_columns: usize,
    /// Scaled score of every query against a heavy key beyond the decay's value at distance 0
    /// (default 6).
    pub heavy_logit: f64,
    /// Repeated spans, applied in order (default: the last `seq / 8` tokens repeat the span that
    /// starts 512 tokens earlier, or at `seq / 4` in short sequences, so the final queries, which
    /// the vertical-slash estimate reads, are in a copy).
    pub repeats: Vec<Repeat>,
    /// Scaled score of an induction match beyond the decay's value at distance 0 (default 6.5):
    /// query `i` against key `j` when token
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
    /// direction in pairs of its own: every other pair whose period `1 / f` lies between 2048 and
    /// 65536 tokens, with equal weight, so its score at distance `t` is the logit times the mean
    /// of `cos(f t)` over those pairs, falling about linearly in `ln(t)` over that range (default
    /// 5.5 plus [`length_boost`](Self::length_boost), chosen so the last rows' top 4096 of 128K keys hold
    /// ~96% of their mass as MInference measured on real models; 0 turns it off and gives the content those
    /// pairs back). Sink and heavy keys and a needle do not carry it and score its value at
    /// distance 0 on top of their own logit against every query; the first repeat's match gets
    /// back what it takes at the repeat's offset (see the [module docs](self)).
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
    /// A spec with the default knobs. The decay grows with `ln(seq / 65536)` past 65536 tokens
    /// ([`length_boost`](Self::length_boost)), so the sink, local, heavy and repeat shares of the
    /// last rows stay about what they are at shorter lengths instead of drowning in a far tail that
    /// grows with the length.
    pub fn new(seq: usize, heads: usize, kv_heads: usize, head_dim: usize, seed: u64) -> InputSpec {
        let len = seq / 8;
        let dst = seq - len;
        let src = if dst > REPEAT_GAP + seq / 4 { dst - REPEAT_GAP } else { seq / 4 };
        let repeats = if len > 0 { vec![Repeat { src, dst, len }] } else { Vec::new() };
        let boost = Self::length_boost(seq);
        let mut spec = InputSpec {
            seq,
            heads,
            kv_heads,
            head_dim,
            seed,
            rope_base: (4.0 * seq as f64).max(500_000.0),
            local_logit: 7.0,
            correlation_length: 16.0,
            query_noise: 0.3,
            sink_tokens: 4,
            sink_logit: 7.0,
            heavy_columns: 4,
            heavy_logit: 6.0,
            repeats,
            induction_logit: 6.5,
            needle: None,
            recency_logit: 1.0,
            decay_logit: DECAY_LOGIT + boost,
        };
        spec.sink_tokens = spec.sink_tokens.min(seq);
        spec.heavy_columns = spec.heavy_columns.min(spec.heavy_range().len());
        spec
    }

    /// What [`new`](Self::new) adds to the decay at `seq` tokens: `ln(seq / 65536)`, 0 up to
    /// 65536. The far keys' total weight grows in proportion to the length; lowering them by its
    /// log keeps their share.
    pub fn length_boost(seq: usize) -> f64 {
        (seq as f64 / BOOST_FROM).ln().max(0.0)
    }

    /// Inputs with a flat far tail, to compare against: no decay, the rotary base 500000, the
    /// repeat's source at `seq / 4`, and the planted logits (local 7, sink 7, heavy 6, induction 6)
    /// raised by `ln(seq / 2048)` past 2048 tokens. Their far diagonals are flat noise, so
    /// vertical-slash estimates of them scatter over the whole length (see the [module docs](self)).
    pub fn flat_tail(seq: usize, heads: usize, kv_heads: usize, head_dim: usize, seed: u64) -> InputSpec {
        let boost = (seq as f64 / 2048.0).ln().max(0.0);
        let len = seq / 8;
        InputSpec {
            rope_base: 500_000.0,
            local_logit: 7.0 + boost,
            sink_logit: 7.0 + boost,
            heavy_logit: 6.0 + boost,
            induction_logit: 6.0 + boost,
            decay_logit: 0.0,
            repeats: if len > 0 { vec![Repeat { src: seq / 4, dst: seq - len, len }] } else { Vec::new() },
            ..InputSpec::new(seq, heads, kv_heads, head_dim, seed)
        }
    }

    fn validate(&self) -> Result<(), MinfError> {
        let bad = |message: String| Err(MinfError::Shape(format!("input spec: {message}")));
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!("kv_heads {} must be positive and divide heads {}", self.kv_heads, self.heads));
        }
        if self.head_dim < 8 || !self.head_dim.is_multiple_of(2) {
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
/// `anchor` the lowest; with a decay, `decay` takes every other pair whose period lies in
/// [`DECAY_PERIODS`] away from the others.
#[derive(Debug, Clone)]
struct Subspaces {
    pairs: usize,
    content: Vec<usize>,
    identity: Vec<usize>,
    anchor: Vec<usize>,
    decay: Vec<usize>,
}

/// How far before its copy a repeated span starts by default (when the sequence is long enough).
const REPEAT_GAP: usize = 512;

/// The length past which [`InputSpec::length_boost`] raises the decay.
const BOOST_FROM: f64 = 65536.0;

/// The default [`InputSpec::decay_logit`] up to 64K tokens: with it the last rows' top 4096 of
/// 128K keys hold 96% of their mass (`examples/inputs_realism.rs`), the share MInference reports
/// for real models (4 gives 90%, 8 gives 99%).
const DECAY_LOGIT: f64 = 5.5;

/// The distances (in tokens, `1 / frequency`) the decay pairs cover.
const DECAY_PERIODS: (f64, f64) = (2048.0, 65536.0);

impl Subspaces {
    fn new(head_dim: usize, frequencies: &[f64], with_decay: bool) -> Subspaces {
        let pairs = head_dim / 2;
        let anchors = (pairs / 32).max(1);
        let free = pairs - anchors;
        let (lo, hi) = DECAY_PERIODS;
        let decay: Vec<usize> = if with_decay {
            let mut in_range: Vec<usize> =
                (0..free).rev().filter(|&m| (lo..=hi).contains(&(1.0 / frequencies[m]))).step_by(2).collect();
            in_range.reverse();
            in_range
        } else {
            Vec::new()
        };
        let rest: Vec<usize> = (0..free).filter(|m| !decay.contains(m)).collect();
        let identity_count = (pairs / 4).max(1);
        let split = rest.len() - identity_count;
        Subspaces {
            pairs,
            content: rest[..split].to_vec(),
            identity: rest[split..].to_vec(),
            anchor: (free..pairs).collect(),
            decay,
        }
    }

    /// The slower half of the content pairs, which carries the recency direction.
    fn recency(&self) -> Vec<usize> {
        self.content[self.content.len() / 2..].to_vec()
    }

    /// Writes `scale * values` (two components per pair of `pairs`) into the unrotated `out`.
    fn put(&self, out: &mut [f64], pairs: &[usize], values: &[f64], scale: f64) {
        for (&m, pair) in pairs.iter().zip(values.chunks_exact(2)) {
            out[m] += scale * pair[0];
            out[m + self.pairs] += scale * pair[1];
        }
    }

    /// The decay's scaled score at distance `t` for `logit`: the logit times the mean cosine of
    /// the rotation over the decay pairs (0 without them).
    fn decay_at(&self, logit: f64, frequencies: &[f64], t: usize) -> f64 {
        if self.decay.is_empty() {
            return 0.0;
        }
        logit * self.decay.iter().map(|&m| (frequencies[m] * t as f64).cos()).sum::<f64>() / self.decay.len() as f64
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
        let frequencies = rope_frequencies(spec.rope_base, d);
        let sub = Subspaces::new(d, &frequencies, spec.decay_logit > 0.0);
        // No pair in the decay's range (a small head or rotary base): no decay at all.
        let decay_logit = if sub.decay.is_empty() { 0.0 } else { spec.decay_logit };
        let (content_dims, identity_dims, anchor_dims) =
            (2 * sub.content.len(), 2 * sub.identity.len(), 2 * sub.anchor.len());
        // Scales giving the documented scaled scores for unit-norm content, identity and anchor.
        let quarter = (d as f64).sqrt().sqrt();
        let content_scale = (spec.local_logit).sqrt() * quarter;
        let identity_scale = (spec.induction_logit).sqrt() * quarter;
        let recency_scale = (spec.recency_logit).sqrt() * quarter;
        // A needle takes the lowest-frequency identity pair for itself.
        let (identity_pairs, needle_pair) = match spec.needle {
            Some(_) => (sub.identity[..sub.identity.len() - 1].to_vec(), sub.identity.last().copied()),
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
            let recency_pairs = sub.recency();
            let recency_raw = random_normal(2 * recency_pairs.len(), stream(seed, 7, g));
            let recency_norm =
                recency_raw.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            let recency: Vec<f64> = recency_raw.iter().map(|x| *x as f64 / recency_norm).collect();
            // The decay direction: constant over positions, the same norm in every decay pair, unit
            // norm; its score at distance `t` is `sub.decay_at(decay_logit, t)`.
            let decay: Vec<f64> = {
                let per_pair = 1.0 / (sub.decay.len().max(1) as f64).sqrt();
                sub.decay.iter().flat_map(|_| [per_pair, 0.0]).collect()
            };
            // What the decay took from a key at distance `t` from the last query, given back to
            // the planted parts so they keep their shares.
            let lost = |t: usize| decay_logit - sub.decay_at(decay_logit, &frequencies, t);
            // The identity term is raised by what the decay takes at the first repeat's offset, so
            // the match scores the induction logit plus the decay at distance 0.
            let identity_scale = match planted.repeats.first() {
                Some(r) if spec.induction_logit != 0.0 => {
                    (spec.induction_logit + lost(r.induction_offset())).sqrt() * quarter
                }
                _ => identity_scale,
            };
            let decay_scale = decay_logit.sqrt() * quarter;
            // The direction sinks and heavy columns share, unit norm.
            let anchor_raw = random_normal(anchor_dims, stream(seed, 4, g));
            let anchor_norm = anchor_raw.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            let anchor: Vec<f64> = anchor_raw.iter().map(|x| *x as f64 / anchor_norm).collect();

            for j in 0..seq {
                // A planted key (sink, heavy column or needle, when on) does not carry the decay
                // direction; its planted logit gets the decay's value at distance 0 instead, so
                // every query scores it the same beyond the planted part, wherever it is.
                let sink_or_heavy = if planted.sink.contains(&j) {
                    spec.sink_logit
                } else if planted.heavy[g].binary_search(&j).is_ok() {
                    spec.heavy_logit
                } else {
                    0.0
                };
                let needle_here = spec.needle.filter(|n| n.position == j && n.logit != 0.0);
                let exempt = sink_or_heavy != 0.0 || needle_here.is_some();
                let decay_given = if exempt { decay_logit } else { 0.0 };
                unrotated.fill(0.0);
                sub.put(&mut unrotated, &sub.content, &content[j * content_dims..][..content_dims], content_scale);
                sub.put(&mut unrotated, &recency_pairs, &recency, recency_scale);
                if decay_logit > 0.0 && !exempt {
                    sub.put(&mut unrotated, &sub.decay, &decay, decay_scale);
                }
                // Key j carries the identity of token j - 1 (slot j of `identity`; slot t + 1 is token t).
                sub.put(
                    &mut unrotated,
                    &identity_pairs,
                    &identity[j * identity_dims..][..identity_dims],
                    identity_scale,
                );
                let anchor_logit = if sink_or_heavy != 0.0 { sink_or_heavy + decay_given } else { 0.0 };
                sub.put(&mut unrotated, &sub.anchor, &anchor, anchor_logit * quarter);
                if let (Some(needle), Some(m)) = (needle_here, needle_pair) {
                    // Pre-rotated so that, after both rotations, it aligns with the last query's.
                    let angle = (seq - 1 - j) as f64 * frequencies[m];
                    let logit = needle.logit + decay_given;
                    unrotated[m] += logit * quarter * angle.cos();
                    unrotated[m + sub.pairs] += logit * quarter * angle.sin();
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
                    sub.put(&mut unrotated, &recency_pairs, &recency, recency_scale);
                    if decay_logit > 0.0 {
                        sub.put(&mut unrotated, &sub.decay, &decay, decay_scale);
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

    /// `spec` with every planted part, the recency term, the decay and the query noise off, so a
    /// test can turn on one part at a time.
    fn silent(spec: InputSpec) -> InputSpec {
        InputSpec {
            local_logit: 0.0,
            induction_logit: 0.0,
            sink_logit: 0.0,
            heavy_logit: 0.0,
            query_noise: 0.0,
            recency_logit: 0.0,
            decay_logit: 0.0,
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
    fn decay_falls_off_with_log_distance_and_planted_parts_keep_their_logits() {
        // The decay direction alone: its score is exactly the logit times the mean cosine of the
        // rotation over its pairs.
        let spec = InputSpec { decay_logit: 8.0, ..silent(InputSpec::new(131072, 1, 1, 128, 3)) };
        let qkv = StructuredInputs::generate(&spec).unwrap();
        let frequencies = rope_frequencies(spec.rope_base, 128);
        let sub = Subspaces::new(128, &frequencies, true);
        assert!(sub.decay.len() >= 6, "{:?}", sub.decay);
        for &m in &sub.decay {
            let period = 1.0 / frequencies[m];
            assert!((2048.0..=65536.0).contains(&period), "pair {m}: period {period}");
            assert!(!sub.content.contains(&m) && !sub.identity.contains(&m) && !sub.anchor.contains(&m));
        }
        let last = 131071;
        let at = |t: usize| logit(&qkv, 0, last, last - t);
        for t in [0, 64, 600, 4096, 8192, 16000, 65536, 131071] {
            let expected = sub.decay_at(8.0, &frequencies, t);
            assert!((at(t) - expected).abs() < 0.01, "distance {t}: {} vs {expected}", at(t));
        }
        // Flat over the first hundreds of tokens, then falling with ln(distance).
        assert!(at(0) > 7.99 && at(600) > 7.0, "{} {}", at(0), at(600));
        assert!(at(600) > at(4096) + 1.0 && at(4096) > at(16000) + 1.0 && at(16000) > at(65536) + 1.0);
        // Off, it changes nothing.
        let off = StructuredInputs::generate(&InputSpec { decay_logit: 0.0, ..spec.clone() }).unwrap();
        assert!(logit(&off, 0, last, last).abs() < 1e-9);
        // A head with no pair in the decay's range (head_dim 8, base 10000: periods up to 100
        // tokens) gets no decay, and its planted parts nothing back.
        let small = InputSpec { rope_base: 10_000.0, ..InputSpec::new(256, 2, 1, 8, 1) };
        assert_eq!(
            StructuredInputs::generate(&InputSpec { decay_logit: 5.0, ..small.clone() }).unwrap(),
            StructuredInputs::generate(&InputSpec { decay_logit: 0.0, ..small }).unwrap()
        );

        // With the decay on, the sink, a heavy column and a needle score their logit plus the
        // decay at distance 0 against the last query, wherever they are (at 32K tokens the anchor
        // pairs turn by under 0.1 radian, so the sink and heavy scores are within 0.5% of it),
        // and the sink scores the same against any other query.
        let spec = InputSpec { decay_logit: 8.0, ..silent(InputSpec::new(32768, 1, 1, 128, 3)) };
        let column = spec.planted().unwrap().heavy[0][0];
        let needle = Needle { position: 5000, queries: 64, logit: 9.0 };
        let planted = StructuredInputs::generate(&InputSpec {
            sink_logit: 7.0,
            heavy_logit: 6.0,
            needle: Some(needle),
            ..spec.clone()
        })
        .unwrap();
        for (j, want) in [(0, 15.0), (3, 15.0), (column, 14.0), (5000, 17.0)] {
            let got = logit(&planted, 0, 32767, j);
            assert!((got - want).abs() < 0.08, "key {j}: {got}, want {want}");
        }
        for i in [10, 700, 9000, 20000] {
            let got = logit(&planted, 0, i, 0);
            assert!((got - 15.0).abs() < 0.08, "sink seen by query {i}: {got}");
        }
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
}
