"""CPU-side tests of the tensor entry points: every check runs before anything is launched (and
before torch is imported), so tensor-like stand-ins carrying dtype, shape, strides, device and
data_ptr exercise them without torch or a GPU."""

import contextlib
import json
import os
import re
from types import SimpleNamespace

import pytest

import minf
import minf.hf
from minf import _tensors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA_CONFIG = os.path.join(ROOT, "configs", "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json")


class FakeDtype:
    def __init__(self, name: str):
        self.name = name

    def __str__(self) -> str:
        return f"torch.{self.name}"


class FakeTensor:
    """The attributes minf reads from a torch.Tensor."""

    def __init__(self, shape, dtype="bfloat16", device=("cuda", 0), strides=None, ptr=1 << 20):
        self.shape = tuple(shape)
        self.dtype = FakeDtype(dtype)
        self.device = SimpleNamespace(type=device[0], index=device[1])
        if strides is None:
            strides, step = [], 1
            for n in reversed(self.shape):
                strides.insert(0, step)
                step *= n
        self._strides = tuple(strides)
        self._ptr = ptr

    def data_ptr(self) -> int:
        return self._ptr

    def stride(self):
        return self._strides

    def dim(self) -> int:
        return len(self.shape)


def qkv(seq=256, heads=8, kv_heads=2, d=128, **kw):
    return FakeTensor([1, seq, heads, d], **kw), FakeTensor([1, seq, kv_heads, d], **kw), FakeTensor([1, seq, kv_heads, d], **kw)


def test_bshd_and_bhsd_are_described_in_logical_order():
    q, k, v = qkv()
    qt, kt, _ = _tensors.check_qkv(q, k, v, "bshd")
    # batch 1: its stride is never stepped over and is passed as 0.
    assert qt.description() == (1 << 20, (1, 256, 8, 128), (0, 8 * 128, 128, 1))
    assert kt.shape == (1, 256, 2, 128) and qt.dtype == "bf16" and qt.device_index == 0
    # A BHSD tensor and a transposed BSHD one (what transformers passes) are both taken.
    q = FakeTensor([2, 8, 300, 64], dtype="float16", device=("cuda", 1))
    k = FakeTensor([2, 4, 320, 64], dtype="float16", device=("cuda", 1), strides=[320 * 4 * 64, 64, 4 * 64, 1])
    qt, kt, vt = _tensors.check_qkv(q, k, k, "bhsd")
    assert qt.shape == (2, 300, 8, 64) and qt.strides == (8 * 300 * 64, 64, 300 * 64, 1)
    assert kt.shape == (2, 320, 4, 64) and kt.strides == (320 * 4 * 64, 4 * 64, 64, 1)
    assert (qt.dtype, qt.device_index) == ("f16", 1)


def test_strides_of_size_one_dimensions_do_not_matter():
    q = FakeTensor([1, 64, 1, 64], strides=[3, 64, 5, 1])
    qt = _tensors.tensor4("q", q, "bshd")
    assert qt.strides == (0, 64, 0, 1)


def test_a_broadcast_output_is_refused():
    q, _, _ = qkv()
    qt = _tensors.tensor4("q", q, "bshd")
    # out.expand()-ed over the heads: every head would write the same memory.
    shared = FakeTensor([1, 256, 8, 128], strides=[256 * 128, 128, 0, 1])
    with pytest.raises(ValueError, match=r"out has shape \[1, 256, 8, 128\] and a dimension of stride 0"):
        _tensors.check_out(shared, qt, "bshd")
    assert _tensors.check_out(FakeTensor([1, 256, 8, 128]), qt, "bshd").shape == qt.shape


def test_an_output_overlapping_an_input_is_refused():
    q, k, v = qkv()
    qt, kt, vt = _tensors.check_qkv(q, k, v, "bshd")
    q_bytes = 256 * 8 * 128 * 2
    # out over q itself, and out starting in q's last row.
    for ptr in (1 << 20, (1 << 20) + q_bytes - 256):
        with pytest.raises(ValueError, match=r"out overlaps q in memory"):
            _tensors.check_out(FakeTensor([1, 256, 8, 128], ptr=ptr), qt, "bshd", (qt, kt, vt))
    # Right after q's last byte (and far from k and v, which share q's start here) is free.
    after = FakeTensor([1, 256, 8, 128], ptr=(1 << 20) + q_bytes)
    assert _tensors.check_out(after, qt, "bshd", (qt, kt, vt)).data_ptr == (1 << 20) + q_bytes


def test_prefill_refuses_a_layer_it_does_not_have():
    prefill = minf.Prefill(layers=2, heads=8, kv_heads=2, head_dim=128)
    with pytest.raises(ValueError, match=r"layer 2 is out of range: this Prefill has layers 0 to 1"):
        prefill.prefill(2, *qkv())


@pytest.mark.parametrize(
    "change, error, text",
    [
        (dict(q=FakeTensor([1, 256, 8, 128], device=("cpu", None))), ValueError,
         r"q is on the cpu device: minf runs on CUDA tensors only \(move it with \.cuda\(\)"),
        (dict(q=FakeTensor([1, 256, 8, 128], dtype="float32")), TypeError,
         r"q has dtype torch.float32: minf takes torch.bfloat16 and torch.float16 tensors"),
        (dict(k=FakeTensor([1, 256, 2, 128], dtype="float16")), TypeError, r"q is bf16 but k is f16"),
        (dict(q=FakeTensor([256, 8, 128])), ValueError, r"q has shape \[256, 8, 128\]: layout 'bshd' needs 4 dimensions"),
        (dict(q=FakeTensor([1, 256, 8, 80])), ValueError, r"q has head_dim 80 .*: allowed 64, 96, 128, 256"),
        (dict(v=FakeTensor([1, 256, 2, 128], strides=[256 * 2 * 256, 2 * 256, 256, 2])), ValueError,
         r"v has strides .*: its last dimension \(head_dim\) must be contiguous \(stride 1\)"),
        (dict(q=FakeTensor([1, 256, 8, 128], strides=[300000, 1028, 128, 1])), ValueError,
         r"rows must start on 16-byte boundaries"),
        (dict(q=FakeTensor([1, 256, 8, 128], ptr=(1 << 20) + 2)), ValueError, r"16-byte boundaries"),
        (dict(k=FakeTensor([1, 256, 2, 128], device=("cuda", 1))), ValueError, r"q is on cuda:0 but k on cuda:1"),
        (dict(v=FakeTensor([1, 256, 4, 128])), ValueError, r"k has shape \[1, 256, 2, 128\] but v has \[1, 256, 4, 128\]"),
        (dict(k=FakeTensor([1, 256, 3, 128]), v=FakeTensor([1, 256, 3, 128])), ValueError,
         r"q has 8 heads and k/v 3: the key/value heads must divide the query heads"),
        (dict(q=FakeTensor([1, 512, 8, 128])), ValueError, r"q has 512 positions but k/v 256: allowed q_len <= kv_len"),
        (dict(k=FakeTensor([2, 256, 2, 128]), v=FakeTensor([2, 256, 2, 128])), ValueError, r"batch and head_dim must be equal"),
        (dict(q="not a tensor"), TypeError, r"q must be a torch.Tensor \(CUDA, bfloat16 or float16, 4-D\), got str"),
        (dict(layout="bsdh"), ValueError, r"layout 'bsdh': allowed 'bshd'"),
        (dict(pattern="sparse"), ValueError, r"pattern 'sparse': allowed 'dense', 'a_shape', 'vertical_slash', 'block_sparse'"),
        (dict(pattern="dense", n_init=4), TypeError, r"pattern 'dense' takes no pattern arguments; got n_init"),
        (dict(pattern="a_shape", n_init=4), TypeError, r"pattern 'a_shape' needs n_init and n_local \(missing n_local\)"),
        (dict(pattern="a_shape", n_init=4, n_local=0), ValueError, r"n_local must be at least 1"),
        (dict(pattern="a_shape", n_init=-1, n_local=8), ValueError, r"n_init must be non-negative, got -1"),
        (dict(pattern="a_shape", n_init=1.5, n_local=8), TypeError, r"n_init must be an integer, got float"),
        (dict(pattern="a_shape", n_init=4, n_local=8, top_k=3), TypeError, r"pattern 'a_shape' takes n_init, n_local; got top_k"),
        (dict(pattern="vertical_slash", vertical_size=100), TypeError, r"needs vertical_size and slash_size"),
        (dict(pattern="vertical_slash", vertical_size=[1, 2, 3], slash_size=50), ValueError,
         r"vertical_size has 3 entries: give one integer or one per query head \(8\)"),
        (dict(pattern="vertical_slash", block_count=FakeTensor([1, 8, 4], dtype="int32")), TypeError,
         r"vertical_slash with an index needs all of block_count, block_offset, column_count, column_index"),
        (dict(pattern="block_sparse", top_k=0), ValueError, r"top_k must be at least 1"),
        (dict(pattern="block_sparse", kv_num_blocks=FakeTensor([1, 8, 4], dtype="int64"),
              kv_indices=FakeTensor([1, 8, 4, 4], dtype="int32")), TypeError,
         r"kv_num_blocks has dtype torch.int64: index tensors are torch.int32"),
        (dict(pattern="block_sparse", kv_num_blocks=FakeTensor([1, 8, 4], dtype="int32"),
              kv_indices=FakeTensor([1, 8, 4], dtype="int32")), ValueError,
         r"kv_indices has shape \[1, 8, 4\]: it needs 4 dimensions \[batch, heads, rows, capacity\]"),
        (dict(pattern="block_sparse", kv_num_blocks=FakeTensor([1, 8, 4], dtype="int32", strides=[64, 8, 2]),
              kv_indices=FakeTensor([1, 8, 4, 4], dtype="int32")), ValueError, r"index tensors must be contiguous"),
        (dict(pattern="block_sparse", kv_num_blocks=FakeTensor([1, 8, 4], dtype="int32", device=("cpu", None)),
              kv_indices=FakeTensor([1, 8, 4, 4], dtype="int32")), ValueError, r"kv_num_blocks is on the cpu device"),
        (dict(softmax_scale=0.0), ValueError, r"softmax_scale 0.0: it must be positive and finite"),
        (dict(softmax_scale=float("nan")), ValueError, r"softmax_scale nan: it must be positive and finite"),
        # Finite as Python floats, but infinity and zero as the kernels' float32.
        (dict(softmax_scale=1e300), ValueError, r"softmax_scale 1e\+300: it must be positive and finite as a float32"),
        (dict(softmax_scale=1e-60), ValueError, r"softmax_scale 1e-60: it must be positive and finite as a float32"),
        (dict(pattern="a_shape", n_init=2**70, n_local=8), ValueError, r"n_init 1180591620717411303424 is too large"),
    ],
)
def test_attention_rejects_bad_input_before_launching(change, error, text):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v)
    args.update(change)
    with pytest.raises(error, match=text):
        minf.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_pattern_arguments_become_the_native_call():
    q, _, _ = qkv()
    qt = _tensors.tensor4("q", q, "bshd")
    kwargs = minf._api._pattern_kwargs
    assert kwargs("dense", {}, qt) == {}
    assert kwargs("a_shape", {"n_init": 4, "n_local": 1024}, qt) == {"n_init": 4, "n_local": 1024}
    assert kwargs("vertical_slash", {"vertical_size": 1000, "slash_size": 6096}, qt) == {
        "vertical_size": [1000], "slash_size": [6096]}
    per_head = list(range(100, 108))
    assert kwargs("vertical_slash", {"vertical_size": per_head, "slash_size": 50}, qt)["vertical_size"] == per_head
    assert kwargs("block_sparse", {}, qt) == {"top_k": 100}
    index = {name: FakeTensor(shape, dtype="int32", ptr=4096 * i) for i, (name, shape) in enumerate(
        [("block_count", [1, 8, 4]), ("block_offset", [1, 8, 4, 16]), ("column_count", [1, 8, 4]),
         ("column_index", [1, 8, 4, 32])])}
    assert kwargs("vertical_slash", index, qt) == {"vertical_slash_index": [
        (0, [1, 8, 4]), (4096, [1, 8, 4, 16]), (8192, [1, 8, 4]), (12288, [1, 8, 4, 32])]}


def test_prefill_reads_the_shipped_config():
    prefill = minf.Prefill(LLAMA_CONFIG)
    assert prefill.shape == (32, 32, 8, 128) and prefill.dense_below == 32768
    patterns = prefill.layer_patterns(16)
    assert len(patterns) == 32 and all(name == "vertical_slash" for name, _ in patterns)
    assert patterns[0] == ("vertical_slash", [3500, 100])
    dense = minf.Prefill(LLAMA_CONFIG, starting_layer=2, dense_below=0)
    assert dense.layer_patterns(1)[0] == ("dense", []) and dense.dense_below == 0
    assert "layers=32, heads=32, kv_heads=8, head_dim=128" in repr(dense)


def test_prefill_default_config_and_a_shape_file(tmp_path):
    default = minf.Prefill(layers=2, heads=8, kv_heads=2, head_dim=64)
    assert default.layer_patterns(1) == [("vertical_slash", [1000, 6096])] * 8
    path = tmp_path / "window.json"
    path.write_text(json.dumps([{str(h): ["stream_llm", 16, 4096, 1.0] for h in range(8)}] * 2))
    window = minf.Prefill(path, heads=8, kv_heads=2, head_dim=64)
    assert window.shape == (2, 8, 2, 64)
    assert window.layer_patterns(0) == [("a_shape", [16, 4096])] * 8


@pytest.mark.parametrize(
    "args, error, text",
    [
        (dict(config=LLAMA_CONFIG, layers=2), ValueError, r"the config has 32 layers but the model has 2"),
        (dict(layers=2, heads=8, kv_heads=3, head_dim=64), ValueError, r"kv_heads must divide heads"),
        (dict(heads=8, kv_heads=2, head_dim=64), ValueError, r"without a config, pass the model's layers"),
        (dict(layers=2, heads=8, kv_heads=2, head_dim=64, block_sparse_top_k=0), ValueError,
         r"block_sparse_top_k must be at least 1"),
        (dict(layers=-1, heads=8, kv_heads=2, head_dim=64), ValueError, r"layers must be non-negative"),
        (dict(layers=0, heads=8, kv_heads=2, head_dim=64), ValueError, r"layers must be at least 1"),
        # The config's bound on its table is checked before anything of the model's size is built.
        (dict(layers=2**60, heads=4, kv_heads=2, head_dim=128), ValueError,
         r"layers 1152921504606846976 and heads 4: .* is more than the 1048576 head entries"),
        (dict(layers=10**11, heads=4, kv_heads=2, head_dim=128), ValueError, r"layers 100000000000 and heads 4"),
        (dict(layers=1, heads=2**20 + 1, kv_heads=1, head_dim=128), ValueError,
         r"layers 1 and heads 1048577: .* more than the 1048576 head entries"),
        (dict(layers=2, heads=8, kv_heads=2, head_dim=32), ValueError, r"head_dim 32: allowed 64, 96, 128, 256"),
        (dict(layers=2, heads=8, kv_heads=2, head_dim=0), ValueError, r"head_dim 0: allowed 64, 96, 128, 256"),
        (dict(layers=2, heads=8, kv_heads=2, head_dim=2**33), ValueError, r"head_dim 8589934592: allowed 64, 96"),
        (dict(layers=2, heads=8, kv_heads=2, head_dim=64, starting_layer=2**64), ValueError,
         r"starting_layer 18446744073709551616 is too large"),
    ],
)
def test_prefill_bad_arguments(args, error, text):
    with pytest.raises(error, match=text):
        minf.Prefill(**args)


def test_head_dims_are_the_code_generators():
    assert _tensors.HEAD_DIMS == tuple(minf._minf.HEAD_DIMS) == (64, 96, 128, 256)
    for head_dim in _tensors.HEAD_DIMS:
        assert minf.Prefill(layers=1, heads=2, kv_heads=1, head_dim=head_dim).shape == (1, 2, 1, head_dim)


def test_prefill_unknown_config_needs_a_shape(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text("[{}]")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a known model's config: pass heads")):
        minf.Prefill(path)
    path.write_text("[{\"0\": [\"stream_llm\", 4, 0, 1]}]")
    with pytest.raises(minf.MinfError, match=r"layer 0, head 0.*at least 1"):
        minf.Prefill(path, heads=2, kv_heads=1, head_dim=64)


def test_prefill_call_checks_the_model_shape():
    prefill = minf.Prefill(layers=2, heads=8, kv_heads=2, head_dim=128)
    q, k, v = qkv(heads=16, kv_heads=2)
    with pytest.raises(ValueError, match=r"q has 16 heads, k/v 2, head_dim 128; this Prefill is for 8 query heads"):
        prefill.prefill(0, q, k, v)
    q, k, v = qkv(device=("cpu", None))
    with pytest.raises(ValueError, match=r"q is on the cpu device"):
        prefill.prefill(0, q, k, v)
    with pytest.raises(TypeError, match=r"layer must be an integer"):
        prefill.prefill("0", *qkv())
    with pytest.raises(ValueError, match=r"chunk_tokens must be at least 1"):
        prefill.prefill_chunked(0, *qkv(), 0)
    q, k, v = qkv(seq=512)
    with pytest.raises(ValueError, match=r"q has 600 positions but k/v 512: allowed q_len <= kv_len"):
        prefill.prefill_chunk(0, FakeTensor([1, 600, 8, 128]), k, v)


def test_prefill_chunked_passes_the_layout_through(monkeypatch):
    """prefill_chunked takes ``layout`` like the other calls: BHSD tensors (what transformers
    passes) reach the native call in minf's logical order, strides and all."""
    prefill = minf.Prefill(layers=2, heads=8, kv_heads=2, head_dim=128)
    calls = []

    class Native:
        shape = prefill.shape

        def prefill_into(self, *args, **kwargs):
            calls.append((args, kwargs))

    stream = SimpleNamespace(cuda_stream=0)
    fake_torch = SimpleNamespace(
        cuda=SimpleNamespace(device=lambda index: contextlib.nullcontext(), current_stream=lambda index: stream)
    )
    monkeypatch.setattr(prefill, "_native", Native())
    monkeypatch.setattr(minf._api, "_torch", lambda: fake_torch)
    q, kv, out = FakeTensor([1, 8, 256, 128]), FakeTensor([1, 2, 256, 128]), FakeTensor([1, 8, 256, 128], ptr=1 << 21)
    assert prefill.prefill_chunked(1, q, kv, kv, 64, layout="bhsd", out=out) is out
    ((args, kwargs),) = calls
    assert kwargs == {"chunk": 64, "lse": None}
    assert args[3] == 1
    assert args[4] == (1 << 20, (1, 256, 8, 128), (0, 128, 256 * 128, 1))
    assert args[5] == (1 << 20, (1, 256, 2, 128), (0, 128, 256 * 128, 1))
    assert args[7] == (1 << 21, (1, 256, 8, 128), (0, 128, 256 * 128, 1))
    # Read as BSHD (the default), the same tensors are 8 queries over 2 keys: the layout is not ignored.
    with pytest.raises(ValueError, match=r"q has 8 positions but k/v 2"):
        prefill.prefill_chunked(1, q, kv, kv, 64, out=out)
    assert len(calls) == 1


class FakeAttention:
    """What minf.hf reads from a transformers attention module."""

    def __init__(self, layer_idx):
        self.layer_idx = layer_idx
        self.o_proj = object()
        self.is_causal = True
        self.training = False


class FakeModel:
    def __init__(self, layers=2):
        self.config = SimpleNamespace(num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                                      hidden_size=1024, _attn_implementation="sdpa")
        self.layers = [FakeAttention(i) for i in range(layers)]

    def modules(self):
        return [self, *self.layers]


def test_hf_model_shape_and_when_minf_runs():
    model = FakeModel()
    assert minf.hf.model_shape(model) == {"layers": 2, "heads": 8, "kv_heads": 2, "head_dim": 128}
    state = minf.hf._Patch(minf.Prefill(layers=2, heads=8, kv_heads=2, head_dim=128, dense_below=1024), "sdpa")
    module = model.layers[1]

    def query(seq, **kw):
        t = FakeTensor([1, 8, seq, 128], **kw)
        t.is_cuda = t.device.type == "cuda"
        return t

    def takes(q_len=2048, kv_len=2048, mask=None, scaling=128 ** -0.5, is_causal=None, q=None, **kwargs):
        return state.takes(module, q or query(q_len), query(kv_len), mask, 0.0, scaling, is_causal, kwargs)

    assert takes()
    assert not takes(q_len=1, kv_len=2049), "decoding runs SDPA"
    assert not takes(q_len=1000, kv_len=1000), "prompts below dense_below run SDPA"
    assert takes(q_len=1024, kv_len=4096), "a chunk after a cached prefix runs minf"
    assert not takes(q_len=2, kv_len=4096), "chunks below dense_chunks_below (512) run SDPA"
    assert not takes(q_len=511, kv_len=4096)
    assert takes(q_len=512, kv_len=4096), "chunks from dense_chunks_below up run minf"
    every_chunk = minf.Prefill(layers=2, heads=8, kv_heads=2, head_dim=128, dense_below=1024, dense_chunks_below=0)
    assert every_chunk.dense_chunks_below == 0 and state.prefill.dense_chunks_below == 512
    state = minf.hf._Patch(every_chunk, "sdpa")
    assert takes(q_len=2, kv_len=1024), "with dense_chunks_below 0, a short chunk runs minf once the keys reach dense_below"
    assert not takes(q_len=500, kv_len=1000), "chunks with fewer keys than dense_below run SDPA"
    assert not takes(q_len=4096, kv_len=1024), "more queries than keys is no chunk"
    assert not takes(mask=object()), "padded batches run SDPA"
    assert not takes(scaling=0.5), "another softmax scale runs SDPA"
    assert not takes(is_causal=False)
    assert not takes(sliding_window=4096)
    assert not takes(q=query(2048, dtype="float32"))
    assert not takes(q=query(2048, device=("cpu", None)))


def test_hf_patch_needs_attention_modules():
    model = FakeModel()
    model.layers = []
    with pytest.raises(ValueError, match="has no attention modules with a layer_idx"):
        minf.hf.patch(model)


def test_hf_patch_refuses_a_head_dim_the_kernels_do_not_take():
    model = FakeModel()
    model.config.head_dim = 32
    with pytest.raises(ValueError, match=r"FakeModel has head_dim 32: minf's kernels take head_dim 64, 96, 128, 256"):
        minf.hf.patch(model)
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(module, "_minf_patch") for module in model.layers)


NO_GPU = not os.path.exists("/dev/nvidiactl")


def test_native_attention_checks_the_softmax_scale_as_float32():
    """The native call takes the scale as a double and refuses one that the kernels' float32
    cannot hold, before it looks for a device."""
    q, k, v = (t.description() for t in _tensors.check_qkv(*qkv(), "bshd"))
    for scale, shown in ((1e300, "1e300"), (1e-60, "1e-60"), (float("inf"), "inf"), (0.0, "0.0")):
        with pytest.raises(ValueError, match=rf"softmax_scale {shown}: it must be positive and finite as a float32"):
            minf._minf.attention_into(0, 0, "bf16", q, k, v, q, pattern="dense", softmax_scale=scale)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_native_calls_take_the_descriptions_and_need_a_driver():
    """The native entry points parse what the Python side passes, then need the CUDA driver."""
    native = minf._minf
    q, k, v = (t.description() for t in _tensors.check_qkv(*qkv(), "bshd"))
    with pytest.raises(minf.MinfError, match="no CUDA driver found"):
        native.attention_into(0, 0, "bf16", q, k, v, q, pattern="dense")
    with pytest.raises(minf.MinfError, match="no CUDA driver found"):
        native.attention_into(0, 0, "f16", q, k, v, q, pattern="vertical_slash", vertical_size=[100],
                              slash_size=[200], lse=(1 << 20, 8 * 256))
    index = [(4096, [1, 8, 4]), (8192, [1, 8, 4, 16])]
    with pytest.raises(minf.MinfError, match="no CUDA driver found"):
        native.attention_into(0, 0, "bf16", q, k, v, q, pattern="block_sparse", block_sparse_index=index)
    with pytest.raises(ValueError, match=r"pattern \"a_shape\" needs n_local"):
        native.attention_into(0, 0, "bf16", q, k, v, q, pattern="a_shape", n_init=4)
    with pytest.raises(TypeError, match=r"dtype \"f32\": allowed bf16 and f16"):
        native.attention_into(0, 0, "f32", q, k, v, q, pattern="dense")
    prefill = minf.Prefill(layers=2, heads=8, kv_heads=2, head_dim=128)
    with pytest.raises(minf.MinfError, match="no CUDA driver found"):
        prefill._native.prefill_into(0, 0, "bf16", 1, q, k, v, q)
    with pytest.raises(minf.MinfError, match="no CUDA driver found"):
        prefill._native.prefill_into(0, 0, "bf16", 1, q, k, v, q, chunk=0, lse=(1 << 20, 8 * 256))
    with pytest.raises(minf.MinfError, match="no CUDA driver found"):
        prefill._native.prefill_into(0, 0, "bf16", 1, q, k, v, q, chunk=128)
    with pytest.raises(ValueError, match="lse is returned by prefill_chunk only"):
        prefill._native.prefill_into(0, 0, "bf16", 1, q, k, v, q, lse=(1 << 20, 8 * 256))
