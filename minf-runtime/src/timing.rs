//! Timing device work the way benchmarks should: CUDA events around each run on the stream, warm-up
//! runs first, the median of the timed runs.

use crate::error::MinfError;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaStream;

/// Runs `work` `warmup` times, then `iters` times between two timing events each, and returns the
/// median in milliseconds. `work` must enqueue on `stream`.
pub fn median_ms(
    stream: &CudaStream,
    warmup: usize,
    iters: usize,
    mut work: impl FnMut() -> Result<(), MinfError>,
) -> Result<f64, MinfError> {
    if iters == 0 {
        return Err(MinfError::Shape("timing needs at least one run".into()));
    }
    for _ in 0..warmup {
        work()?;
    }
    let event = || {
        stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(MinfError::driver("recording a timing event"))
    };
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = event()?;
        work()?;
        let end = event()?;
        end.synchronize().map_err(MinfError::driver("waiting for a timed run"))?;
        times.push(start.elapsed_ms(&end).map_err(MinfError::driver("reading a timing event"))? as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
