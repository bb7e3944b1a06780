//! The small check: causal attention of one Llama-3-8B-shaped layer (32 query heads,
//! 8 key/value heads, d = 128, bf16) on the GPU through minf, checked against the CPU float64
//! reference on sampled rows and timed.
//!
//! `cargo run --release --example quickstart [-- --seq 16384]`
//!
//! On a machine without a GPU it says so and points to what does work there.

use half::bf16;
use minf::{dense_attention, AttentionOptions, Device, MinfError, TensorMut, TensorRef};
use minf_testkit::reference::{causal_attention_rows, random_normal, relative_l2, ReferenceShape};
use std::process::ExitCode;

fn main() -> ExitCode {
    let seq = std::env::args().skip_while(|a| a != "--seq").nth(1).and_then(|v| v.parse().ok()).unwrap_or(16_384usize);
    match run(seq) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart: {error}");
            if matches!(error.downcast_ref::<MinfError>(), Some(MinfError::NoDriver | MinfError::Driver { .. })) {
                eprintln!(
                    "This machine cannot run kernels. Without a GPU you can still compile every kernel:\n  \
                     cargo run --release -- warm --arch sm_80,sm_90a\nand see what minf finds:\n  \
                     cargo run --release -- doctor"
                );
            }
            ExitCode::FAILURE
        }
    }
}

fn run(seq: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (heads, kv_heads, head_dim) = (32, 8, 128);
    let device = Device::new(0)?;
    println!(
        "minf quickstart on {} ({}): causal attention, seq {seq}, {heads}/{kv_heads} heads, d {head_dim}, bf16",
        device.name(),
        device.arch()
    );
    let stream = device.stream().clone();
    let q_shape = [1, seq, heads, head_dim];
    let kv_shape = [1, seq, kv_heads, head_dim];
    let inputs =
        |n: usize, seed: u64| -> Vec<bf16> { random_normal(n, seed).into_iter().map(bf16::from_f32).collect() };
    let (q_host, k_host, v_host) = (
        inputs(seq * heads * head_dim, 11),
        inputs(seq * kv_heads * head_dim, 12),
        inputs(seq * kv_heads * head_dim, 13),
    );
    let (q, k, v) = (stream.clone_htod(&q_host)?, stream.clone_htod(&k_host)?, stream.clone_htod(&v_host)?);
    let mut out = stream.alloc_zeros::<bf16>(seq * heads * head_dim)?;
    let mut attend = || -> Result<(), MinfError> {
        dense_attention(
            &device,
            TensorRef::bshd(&q, q_shape)?,
            TensorRef::bshd(&k, kv_shape)?,
            TensorRef::bshd(&v, kv_shape)?,
            TensorMut::bshd(&mut out, q_shape)?,
            AttentionOptions::default(),
        )
    };
    let started = std::time::Instant::now();
    attend()?;
    stream.synchronize()?;
    println!("first call (kernel from cache or JIT, then run): {:.2} s", started.elapsed().as_secs_f64());
    let ms = minf::timing::median_ms(&stream, 2, 10, &mut attend)?;
    let flops = 2.0 * (seq as f64).powi(2) * head_dim as f64 * heads as f64;
    println!("attention: {ms:.3} ms, {:.1} TFLOP/s on the causal half", flops / (ms * 1e-3) / 1e12);

    let got: Vec<f32> = stream.clone_dtoh(&out)?.into_iter().map(f32::from).collect();
    let rows: Vec<usize> = (0..seq).step_by((seq / 64).max(1)).chain([seq - 1]).collect();
    let widen = |x: &[bf16]| -> Vec<f32> { x.iter().map(|v| v.to_f32()).collect() };
    let shape = ReferenceShape { batch: 1, seq, heads, kv_heads, head_dim };
    let want = causal_attention_rows(
        shape,
        &widen(&q_host),
        &widen(&k_host),
        &widen(&v_host),
        1.0 / (head_dim as f64).sqrt(),
        &rows,
    );
    let got_rows: Vec<f64> = want
        .rows
        .iter()
        .flat_map(|&(_, i, h)| got[(i * heads + h) * head_dim..][..head_dim].iter().map(|x| *x as f64))
        .collect();
    let error = relative_l2(&got_rows, &want.out);
    println!("relative L2 error vs the float64 CPU reference on {} sampled rows: {error:.2e}", rows.len());
    if error > 1e-2 {
        return Err(format!("error {error:.2e} is above 1e-2").into());
    }
    Ok(())
}
