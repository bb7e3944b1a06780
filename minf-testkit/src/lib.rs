//! minf's development kit: what the tests, examples and benchmarks check the library against.
//! It is not part of the library (`publish = false`; `minf`, `minf-runtime`, `minf-codegen` and
//! `minf-macros` never depend on it).
//!
//! - [`inputs`]: a seeded generator of queries, keys and values with the structure real attention
//!   has (sinks, heavy columns, local and long-range decay, repeated segments, needles);
//! - [`reference`](mod@reference): attention (whole sequences and chunks of queries against a longer
//!   key prefix, and the log-sum-exp merge of partial results) and the recall of a sparse mask in f64
//!   on the CPU, and the seeded random numbers ([`TestRng`], [`random_normal`]) inputs are drawn
//!   from;
//! - [`estimate`]: MInference's vertical-slash and block-sparse estimates in f64, the reference of
//!   the GPU estimates in [`minf_runtime::estimate`];
//! - [`convert`]: the CPU model of the vertical-slash converter;
//! - [`masks`]: the masks the attention kernels realise, in absolute positions;
//! - [`select`]: the CPU model of the estimates' top-k selections (segmented radix select and
//!   ordered compaction);
//! - [`schedule`]: the CPU model of which key tiles the index-driven kernels compute.

pub mod convert;
pub mod estimate;
pub mod inputs;
pub mod masks;
pub mod reference;
pub mod schedule;
pub mod select;

pub use inputs::{InputSpec, Needle, Planted, Repeat, StructuredInputs};
pub use reference::{random_normal, recall, ChunkShape, RecallStats, ReferenceShape, TestRng};
