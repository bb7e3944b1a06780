//! GPU tests of `minf::foreign`: memory and a stream owned by "another library" (here, cudarc
//! slices and a stream minf does not own), viewed without copies, give the same results as minf's
//! own buffers, on that stream, and the views never free the owner's memory.

use super::{device, test_seed};
use cudarc::driver::{CudaSlice, DevicePtr};
use half::bf16;
use minf::foreign::{stream_device, ForeignSlice};
use minf::tensor::Layout;
use minf::{dense_attention, AttentionOptions, TensorMut, TensorRef};
use minf_testkit::reference::random_normal;

#[test]
#[ignore = "needs a CUDA GPU"]
fn foreign_views_on_a_borrowed_stream_match_owned_buffers() {
    let seed = test_seed("foreign_views_on_a_borrowed_stream_match_owned_buffers");
    let owner = device();
    let (seq, heads, kv_heads, d) = (777, 8, 2, 128);
    let q_layout = Layout::bhsd([1, seq, heads, d]);
    let kv_layout = Layout::bshd([1, seq, kv_heads, d]);
    let round = |v: Vec<f32>| -> Vec<bf16> { v.into_iter().map(bf16::from_f32).collect() };
    let (q_host, k_host, v_host) = (
        round(random_normal(q_layout.span(), seed)),
        round(random_normal(kv_layout.span(), seed ^ 1)),
        round(random_normal(kv_layout.span(), seed ^ 2)),
    );
    // The "other library": its own stream and buffers.
    let library_stream = owner.context().new_stream().expect("a stream minf does not own");
    let upload = |host: &[bf16]| library_stream.clone_htod(host).expect("upload");
    let (q, k, v) = (upload(&q_host), upload(&k_host), upload(&v_host));
    let out: CudaSlice<bf16> = library_stream.alloc_zeros(q_layout.span()).expect("out");
    let address = |slice: &CudaSlice<bf16>| slice.device_ptr(&library_stream).0;
    let (q_ptr, k_ptr, v_ptr, out_ptr) = (address(&q), address(&k), address(&v), address(&out));

    // SAFETY: the stream is of device 0's primary context and outlives the test's launches.
    let borrowed = unsafe { stream_device(0, library_stream.cu_stream()) }.expect("device on the borrowed stream");
    assert_eq!(borrowed.stream().cu_stream(), library_stream.cu_stream());
    // SAFETY: as above; one device per (ordinal, stream).
    let again = unsafe { stream_device(0, library_stream.cu_stream()) }.expect("the same device");
    assert!(std::ptr::eq(borrowed, again));
    {
        // SAFETY: the slices are live allocations of these lengths, used in this stream's order.
        let (qv, kv, vv, mut ov) = unsafe {
            (
                ForeignSlice::<bf16>::new(borrowed.stream(), q_ptr, q_layout.span()),
                ForeignSlice::<bf16>::new(borrowed.stream(), k_ptr, kv_layout.span()),
                ForeignSlice::<bf16>::new(borrowed.stream(), v_ptr, kv_layout.span()),
                ForeignSlice::<bf16>::new(borrowed.stream(), out_ptr, q_layout.span()),
            )
        };
        dense_attention(
            borrowed,
            TensorRef::new(qv.slice(), q_layout).expect("q"),
            TensorRef::new(kv.slice(), kv_layout).expect("k"),
            TensorRef::new(vv.slice(), kv_layout).expect("v"),
            TensorMut::new(ov.slice_mut(), q_layout).expect("out"),
            AttentionOptions::default(),
        )
        .expect("launch on the borrowed stream");
    }
    library_stream.synchronize().expect("the borrowed stream ran");
    // The owner's buffers are intact after the views are gone (nothing was freed).
    let through_views = library_stream.clone_dtoh(&out).expect("download");
    assert_eq!(library_stream.clone_dtoh(&q).expect("q still allocated"), q_host);

    // minf's own buffers on its own stream: bit-identical.
    let stream = owner.stream();
    let (q2, k2, v2) = (
        stream.clone_htod(&q_host).expect("q"),
        stream.clone_htod(&k_host).expect("k"),
        stream.clone_htod(&v_host).expect("v"),
    );
    let mut out2: CudaSlice<bf16> = stream.alloc_zeros(q_layout.span()).expect("out");
    dense_attention(
        &owner,
        TensorRef::new(&q2, q_layout).expect("q"),
        TensorRef::new(&k2, kv_layout).expect("k"),
        TensorRef::new(&v2, kv_layout).expect("v"),
        TensorMut::new(&mut out2, q_layout).expect("out"),
        AttentionOptions::default(),
    )
    .expect("launch");
    let owned = stream.clone_dtoh(&out2).expect("download");
    assert!(owned.iter().all(|x| x.is_finite()));
    assert!(through_views == owned, "foreign views gave other results than minf's own buffers (seed {seed})");
}
