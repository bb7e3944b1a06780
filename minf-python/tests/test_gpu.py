"""GPU tests of the tensor entry points and the Hugging Face patch (issue 16's acceptance).

They need PyTorch with a CUDA GPU (and transformers and safetensors for the model tests); without
them every test is skipped with the reason. Run on the GPU machine with ``scripts/gpu-suite.sh
--python`` (docs/python.md). Results worth reading (errors, times) are printed: run pytest with
``-s``. Inputs are random with a printed seed (``MINF_TEST_SEED``).
"""

import json
import os
import subprocess
import tempfile
from typing import Any, Dict, Optional, Tuple

import pytest

import minf
import minf.hf

torch = pytest.importorskip("torch", reason="the GPU tests need PyTorch")
if not torch.cuda.is_available():
    pytest.skip("the GPU tests need a CUDA GPU (torch.cuda.is_available() is False)", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA_CONFIG = os.path.join(ROOT, "configs", "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json")
#: bf16 inputs and outputs: the kernels land near 3e-3 relative L2 against a float64 reference.
BF16_TOLERANCE = 1e-2
#: Largest absolute log-sum-exp difference (the Rust GPU tests' bound).
LSE_TOLERANCE = 1e-2
SEED = int(os.environ.get("MINF_TEST_SEED", "1"))
print(f"minf python GPU tests: seed {SEED} (MINF_TEST_SEED)")


def rel_l2(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def lse_error(lse: Any, reference: Any) -> float:
    return float((lse.double() - reference).abs().max())


def random_qkv(seq: int, heads: int, kv_heads: int, d: int, layout: str, q_len: Optional[int] = None,
               dtype: Any = torch.bfloat16) -> Tuple[Any, Any, Any]:
    generator = torch.Generator(device="cuda").manual_seed(SEED)
    q_len = seq if q_len is None else q_len

    def make(s: int, h: int) -> Any:
        shape = (1, s, h, d) if layout == "bshd" else (1, h, s, d)
        return torch.randn(shape, generator=generator, device="cuda", dtype=dtype)

    return make(q_len, heads), make(seq, kv_heads), make(seq, kv_heads)


def to_bhsd(t: Any, layout: str) -> Any:
    return t if layout == "bhsd" else t.transpose(1, 2)


def masked_reference(q: Any, k: Any, v: Any, layout: str, visible: Any, scale: Optional[float] = None
                     ) -> Tuple[Any, Any]:
    """float64 attention under ``visible(i, j)`` (absolute query and key positions -> bool,
    broadcast to [heads, q_len, kv_len]) and its log-sum-exp; outputs in ``layout``."""
    q, k, v = (to_bhsd(t, layout).double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    q_len, kv_len = q.shape[2], k.shape[2]
    i = torch.arange(q_len, device="cuda")[:, None] + (kv_len - q_len)
    j = torch.arange(kv_len, device="cuda")[None, :]
    scores = scores.masked_fill(~visible(i, j), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ v
    return (out if layout == "bhsd" else out.transpose(1, 2)), lse


def causal(i: Any, j: Any) -> Any:
    return j <= i


def on_side_stream(fn: Any, *inputs: Any) -> Any:
    """Runs ``fn`` on a new stream, on inputs copied on that stream after a delay: a launch on any
    other stream would read them before they are written."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(20_000_000)
        copies = [t.clone() for t in inputs]
        result = fn(*copies)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return result


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_dense_matches_sdpa_and_the_reference_on_a_side_stream(layout):
    q, k, v = random_qkv(1000, 8, 2, 128, layout)
    out, lse = on_side_stream(lambda q, k, v: minf.attention(q, k, v, layout=layout, lse=True), q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        to_bhsd(q, layout), to_bhsd(k, layout), to_bhsd(v, layout), is_causal=True, enable_gqa=True)
    reference, reference_lse = masked_reference(q, k, v, layout, causal)
    error_sdpa = rel_l2(to_bhsd(out, layout), sdpa)
    error = rel_l2(out, reference)
    print(f"dense {layout}: rel L2 {error:.2e} vs float64, {error_sdpa:.2e} vs SDPA")
    assert error < BF16_TOLERANCE and error_sdpa < BF16_TOLERANCE
    assert lse_error(lse, reference_lse) <= LSE_TOLERANCE


def test_dense_f16_with_a_scale_and_strided_inputs():
    # Every third head of a wider tensor: strides that are no contiguous layout.
    q, k, v = random_qkv(700, 24, 6, 64, "bshd", dtype=torch.float16)
    q, k, v = q[:, :, ::3], k[:, :, ::3], v[:, :, ::3]
    out = minf.attention(q, k, v, softmax_scale=0.1)
    torch.cuda.synchronize()
    reference, _ = masked_reference(q, k, v, "bshd", causal, scale=0.1)
    assert rel_l2(out, reference) < BF16_TOLERANCE


def a_shape_mask(n_init: int, n_local: int) -> Any:
    return lambda i, j: (j <= i) & ((j < n_init) | (i - j < n_local))


def block_sparse_index(q_len: int, heads: int, generator: Any) -> Tuple[Any, Any, Any]:
    """Random ascending 64-key block lists per (head, 64-row block), the diagonal block always
    listed; returns the index tensors and the visibility mask they mean."""
    rows = (q_len + 63) // 64
    capacity = 6
    counts = torch.zeros((1, heads, rows), dtype=torch.int32)
    lists = torch.zeros((1, heads, rows, capacity), dtype=torch.int32)
    visible = torch.zeros((heads, rows, rows), dtype=torch.bool)
    for h in range(heads):
        for r in range(rows):
            chosen = torch.randperm(r + 1, generator=generator)[: capacity - 1].tolist()
            blocks = sorted(set(chosen) | {r})[:capacity]
            counts[0, h, r] = len(blocks)
            lists[0, h, r, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
            visible[h, r, blocks] = True
    return counts.cuda(), lists.cuda(), visible.cuda()


def vertical_slash_index(q_len: int, heads: int, generator: Any) -> Tuple[Tuple[Any, ...], Any]:
    """A converted vertical-slash index (MInference's format) per (head, 64-row block): the
    diagonal range, one unaligned range further back and a few gathered columns before both;
    returns the four tensors and the [heads, q_len, q_len] visibility they mean."""
    rows = (q_len + 63) // 64
    nnz_s, nnz_v = 2, 8
    block_count = torch.zeros((1, heads, rows), dtype=torch.int32)
    block_offset = torch.zeros((1, heads, rows, nnz_s), dtype=torch.int32)
    column_count = torch.zeros((1, heads, rows), dtype=torch.int32)
    column_index = torch.zeros((1, heads, rows, nnz_v), dtype=torch.int32)
    visible = torch.zeros((heads, q_len, q_len), dtype=torch.bool)
    causal_mask = torch.ones((q_len, q_len), dtype=torch.bool).tril()
    for h in range(heads):
        for r in range(rows):
            starts = [64 * r]
            back = 64 * r - 100 - int(torch.randint(0, 50, (1,), generator=generator))
            if back >= 0:
                starts.insert(0, back)
            columns = []
            end = starts[0]
            if end > 0:
                columns = sorted(torch.randperm(end, generator=generator)[: min(nnz_v, end)].tolist())
            block_count[0, h, r] = len(starts)
            block_offset[0, h, r, : len(starts)] = torch.tensor(starts, dtype=torch.int32)
            column_count[0, h, r] = len(columns)
            if columns:
                column_index[0, h, r, : len(columns)] = torch.tensor(columns, dtype=torch.int32)
            rows_slice = slice(64 * r, min(64 * r + 64, q_len))
            for start in starts:
                visible[h, rows_slice, start:start + 64] = True
            visible[h, rows_slice, columns] = True
    visible &= causal_mask
    tensors = tuple(t.cuda() for t in (block_count, block_offset, column_count, column_index))
    return tensors, visible.cuda()


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("case", ["a_shape", "vertical_slash_index", "block_sparse_index",
                                  "vertical_slash_estimated_full", "block_sparse_estimated_full"])
def test_each_pattern_matches_the_masked_reference(layout, case):
    seq, heads, kv_heads = 1000, 4, 2
    q, k, v = random_qkv(seq, heads, kv_heads, 128, layout)
    generator = torch.Generator().manual_seed(SEED)
    if case == "a_shape":
        args: Dict[str, Any] = dict(pattern="a_shape", n_init=16, n_local=200)
        visible = a_shape_mask(16, 200)
    elif case == "block_sparse_index":
        counts, lists, blocks = block_sparse_index(seq, heads, generator)
        args = dict(pattern="block_sparse", kv_num_blocks=counts, kv_indices=lists)
        per_key = blocks.repeat_interleave(64, 1).repeat_interleave(64, 2)[:, :seq, :seq]
        visible = lambda i, j: per_key & (j <= i)  # noqa: E731
    elif case == "vertical_slash_index":
        tensors, mask = vertical_slash_index(seq, heads, generator)
        args = dict(pattern="vertical_slash", **dict(zip(
            ("block_count", "block_offset", "column_count", "column_index"), tensors)))
        visible = lambda i, j: mask  # noqa: E731
    elif case == "vertical_slash_estimated_full":
        # Every column and diagonal requested: the estimate keeps all of them, i.e. causal attention.
        args = dict(pattern="vertical_slash", vertical_size=seq, slash_size=seq)
        visible = causal
    else:
        args = dict(pattern="block_sparse", top_k=(seq + 63) // 64)
        visible = causal
    out, lse = on_side_stream(lambda q, k, v: minf.attention(q, k, v, layout=layout, lse=True, **args), q, k, v)
    reference, reference_lse = masked_reference(q, k, v, layout, visible)
    error = rel_l2(out, reference)
    print(f"{case} {layout}: rel L2 {error:.2e}")
    assert error < BF16_TOLERANCE
    assert lse_error(lse, reference_lse) <= LSE_TOLERANCE


@pytest.mark.parametrize("pattern", ["dense", "vertical_slash_estimated_full", "block_sparse_estimated_full"])
def test_q_shorter_than_kv_is_exact(pattern):
    """q_len < kv_len (a chunk after a prefix): the queries are the last q_len positions, with the
    causal diagonal aligned bottom-right. The estimated patterns size their indices by the keys:
    asking for every column, diagonal or key block gives causal attention."""
    q, k, v = random_qkv(512, 4, 2, 128, "bshd", q_len=200)
    args: Dict[str, Any] = {
        "dense": {},
        "vertical_slash_estimated_full": dict(pattern="vertical_slash", vertical_size=512, slash_size=512),
        "block_sparse_estimated_full": dict(pattern="block_sparse", top_k=512 // 64),
    }[pattern]
    out = minf.attention(q, k, v, **args)
    torch.cuda.synchronize()
    reference, _ = masked_reference(q, k, v, "bshd", causal)
    error = rel_l2(out, reference)
    print(f"q shorter than kv, {pattern}: rel L2 {error:.2e}")
    assert error < BF16_TOLERANCE


def banded_and_scattered_index(seq: int) -> Tuple[Tuple[Any, ...], Any]:
    """A converted vertical-slash index of two heads whose 64-row halves of a 128-row block share
    their keys (head 0: 64 adjacent ranges ending at the diagonal) or share none (head 1: 64 ranges
    128 keys apart, an odd row's 64 keys off its even neighbour's), each with 3 columns below its
    first range; returns the four tensors and the per-(head, 64-row block) key visibility
    ``[heads, rows, seq]``."""
    rows = seq // 64
    r = torch.arange(rows, device="cuda")[:, None]
    m = torch.arange(63, -1, -1, device="cuda")[None, :]
    heads_starts = [64 * r - 64 * m, 64 * r - 128 * m]
    block_count = torch.zeros((1, 2, rows), dtype=torch.int32, device="cuda")
    block_offset = torch.zeros((1, 2, rows, 64), dtype=torch.int32, device="cuda")
    column_count = torch.zeros((1, 2, rows), dtype=torch.int32, device="cuda")
    column_index = torch.zeros((1, 2, rows, 3), dtype=torch.int32, device="cuda")
    visible = torch.zeros((2, rows, seq), dtype=torch.bool, device="cuda")
    for h, starts in enumerate(heads_starts):
        valid = starts >= 0
        count = valid.sum(dim=1)
        # Ascending starts, the valid ones first (a row's starts past its count are not read).
        ordered = torch.where(valid, starts, starts + 64 * seq).sort(dim=1).values
        block_count[0, h] = count.int()
        block_offset[0, h] = torch.where(ordered < seq, ordered, 0).int()
        keys = ordered[:, :, None] + torch.arange(64, device="cuda")[None, None, :]
        row_of = r[:, :, None].expand_as(keys)
        keep = keys < seq
        visible[h, row_of[keep], keys[keep]] = True
        first = ordered[:, 0:1].clamp_max(seq)
        first = torch.where(count[:, None] > 0, first, torch.zeros_like(first))
        columns = (first * torch.arange(1, 4, device="cuda")[None, :]) // 4
        has_columns = (first >= 4).squeeze(1)
        column_count[0, h] = torch.where(has_columns, 3, 0).int()
        column_index[0, h] = columns.int()
        visible[h, r[has_columns].expand(-1, 3), columns[has_columns]] = True
    return (block_count, block_offset, column_count, column_index), visible


@pytest.mark.parametrize("case", ["vertical_slash_index", "vertical_slash_estimated_full",
                                  "block_sparse_estimated_full"])
def test_a_long_index_runs_the_tile_choice_and_matches_its_reference(case):
    """At 32K tokens (512 index rows, the fewest the tile choice chooses for) an index-driven call
    runs a chooser and two launches, each computing the heads the other skips: a head computed by
    neither would keep the NaNs of ``out``. The index case has a head whose 64-row halves share
    their keys and one whose halves share none (the chooser's two cases); the estimated ones ask
    for every key (causal attention)."""
    seq, heads = 32768, 2
    q, k, v = random_qkv(seq, heads, 1, 128, "bshd")
    if case == "vertical_slash_index":
        tensors, per_row = banded_and_scattered_index(seq)
        args: Dict[str, Any] = dict(pattern="vertical_slash", **dict(zip(
            ("block_count", "block_offset", "column_count", "column_index"), tensors)))
    elif case == "vertical_slash_estimated_full":
        args = dict(pattern="vertical_slash", vertical_size=seq, slash_size=seq)
        per_row = None
    else:
        args = dict(pattern="block_sparse", top_k=seq // 64)
        per_row = None
    out = torch.full_like(q, float("nan"))
    out, lse = minf.attention(q, k, v, lse=True, out=out, **args)
    torch.cuda.synchronize()
    # float64 reference in slices of 4096 queries (a whole 32K x 32K score matrix is 8 GiB a head).
    error_sq, norm_sq, lse_worst = 0.0, 0.0, 0.0
    for h in range(heads):
        keys, values = k[0, :, 0].double(), v[0, :, 0].double()
        for start in range(0, seq, 4096):
            i = torch.arange(start, start + 4096, device="cuda")
            j = torch.arange(seq, device="cuda")
            visible = j[None, :] <= i[:, None]
            if per_row is not None:
                visible &= per_row[h, i // 64]
            scores = (q[0, start:start + 4096, h].double() @ keys.T) * 128 ** -0.5
            scores.masked_fill_(~visible, float("-inf"))
            reference = torch.softmax(scores, dim=-1) @ values
            got = out[0, start:start + 4096, h].double()
            error_sq += float((got - reference).square().sum())
            norm_sq += float(reference.square().sum())
            lse_worst = max(lse_worst, float((lse[0, h, start:start + 4096].double()
                                              - torch.logsumexp(scores, dim=-1)).abs().max()))
    error = (error_sq / norm_sq) ** 0.5
    print(f"tile choice at 32K, {case}: rel L2 {error:.2e}, largest lse difference {lse_worst:.2e}")
    assert error < BF16_TOLERANCE
    assert lse_worst <= LSE_TOLERANCE


def window_config(path: str, layers: int, heads: int, window: int) -> str:
    """A config whose heads are all A-shape windows of ``window`` keys (no sinks)."""
    with open(path, "w") as f:
        json.dump([{str(h): ["stream_llm", 0, window, 1.0] for h in range(heads)}] * layers, f)
    return path


def test_prefill_with_a_window_config_equals_dense():
    seq, heads, kv_heads = 3000, 8, 2
    q, k, v = random_qkv(seq, heads, kv_heads, 128, "bhsd")
    with tempfile.TemporaryDirectory() as tmp:
        config = window_config(os.path.join(tmp, "window.json"), 2, heads, seq)
        prefill = minf.Prefill(config, heads=heads, kv_heads=kv_heads, head_dim=128, dense_below=0)
    out = on_side_stream(lambda q, k, v: prefill.prefill(1, q, k, v, layout="bhsd"), q, k, v)
    reference, _ = masked_reference(q, k, v, "bhsd", causal)
    assert rel_l2(out, reference) < BF16_TOLERANCE
    # The shipped Llama config's layer 0 on Llama-3-8B heads, through the vertical-slash estimate.
    q, k, v = random_qkv(4096, 32, 8, 128, "bshd")
    shipped = minf.Prefill(LLAMA_CONFIG, dense_below=0)
    out = shipped.prefill(0, q, k, v)
    torch.cuda.synchronize()
    assert out.isfinite().all()


def test_prefill_chunk_and_chunked_equal_causal_attention_under_whole_prompt_windows():
    seq, heads, kv_heads = 3000, 8, 2
    q, k, v = random_qkv(seq, heads, kv_heads, 128, "bshd")
    with tempfile.TemporaryDirectory() as tmp:
        config = window_config(os.path.join(tmp, "window.json"), 1, heads, seq)
        prefill = minf.Prefill(config, heads=heads, kv_heads=kv_heads, head_dim=128, dense_below=0)
    reference, reference_lse = masked_reference(q, k, v, "bshd", causal)
    out = prefill.prefill_chunked(0, q, k, v, 1024)
    assert rel_l2(out, reference) < BF16_TOLERANCE
    # The last chunk alone, after its 2000-token prefix, with its LSE.
    chunk, chunk_lse = prefill.prefill_chunk(0, q[:, 2000:], k, v, lse=True)
    assert rel_l2(chunk, reference[:, 2000:]) < BF16_TOLERANCE
    assert lse_error(chunk_lse, reference_lse[:, :, 2000:]) <= LSE_TOLERANCE


# --- Hugging Face ---------------------------------------------------------------------------------


def llama(layers: int = 2) -> Any:
    """A random Llama with Llama-3-8B's attention shape (32/8 heads, head_dim 128) and a small
    hidden size and vocabulary."""
    transformers = pytest.importorskip("transformers", reason="the model tests need transformers")
    config = transformers.LlamaConfig(
        hidden_size=512, intermediate_size=1024, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=1024, max_position_embeddings=1 << 18,
    )
    torch.manual_seed(SEED)
    model = transformers.LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16).eval()
    model.set_attn_implementation("sdpa")
    return model


def shipped_layers(path: str, layers: Tuple[int, ...]) -> str:
    """The shipped Llama-3-8B-262K config's ``layers``, as a config of that many layers."""
    with open(LLAMA_CONFIG) as f:
        full = json.load(f)
    with open(path, "w") as f:
        json.dump([full[layer] for layer in layers], f)
    return path


def logits(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_hf_patch_with_whole_prompt_windows_equals_unpatched_at_32k():
    model = llama()
    seq = 32768
    ids = torch.randint(0, 1024, (1, seq), device="cuda", generator=torch.Generator(device="cuda").manual_seed(SEED))
    unpatched = logits(model, ids)
    with tempfile.TemporaryDirectory() as tmp:
        config = window_config(os.path.join(tmp, "window.json"), 2, 32, seq)
        prefill = minf.hf.patch(model, config)
    calls = count_calls(prefill)
    patched = logits(model, ids)
    assert calls["prefill"] == 2, "minf ran every layer's prefill"
    error = rel_l2(patched, unpatched)
    agree = float((patched.argmax(-1) == unpatched.argmax(-1)).float().mean())
    print(f"whole-prompt windows at 32K: logits rel L2 {error:.2e}, argmax agreement {agree:.4f}")
    assert error < BF16_TOLERANCE
    # The shipped Llama-3-8B-262K config (its layers 16 and 17): the error sparse attention makes.
    minf.hf.unpatch(model)
    with tempfile.TemporaryDirectory() as tmp:
        minf.hf.patch(model, shipped_layers(os.path.join(tmp, "llama.json"), (16, 17)))
    sparse = logits(model, ids)
    error = rel_l2(sparse, unpatched)
    agree = float((sparse.argmax(-1) == unpatched.argmax(-1)).float().mean())
    print(f"shipped Llama-3-8B-262K config (layers 16, 17) at 32K: logits rel L2 {error:.3e} against the "
          f"unpatched model, argmax agreement {agree:.4f} (random weights and tokens)")
    assert sparse.isfinite().all()


def test_hf_chunk_after_a_cached_prefix_runs_prefill_chunk_and_equals_unpatched():
    """The next turn of a chat: 24K tokens prefilled, then 8K more with the first 24K in the cache
    (q_len 8192 < kv_len 32768). Patched with whole-prompt windows, the second chunk runs
    minf's prefill_chunk in every layer and its logits equal the unpatched model's."""
    from transformers import DynamicCache

    model = llama()
    seq, first = 32768, 24576
    ids = torch.randint(0, 1024, (1, seq), device="cuda", generator=torch.Generator(device="cuda").manual_seed(SEED))

    def second_chunk() -> Any:
        cache = DynamicCache()
        with torch.no_grad():
            model(input_ids=ids[:, :first], past_key_values=cache, use_cache=True)
            return model(input_ids=ids[:, first:], past_key_values=cache, use_cache=True).logits.float()

    unpatched = second_chunk()
    with tempfile.TemporaryDirectory() as tmp:
        prefill = minf.hf.patch(model, window_config(os.path.join(tmp, "window.json"), 2, 32, seq), dense_below=16384)
    calls = {"prefill_chunk": 0}
    original = prefill.prefill_chunk

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["prefill_chunk"] += 1
        return original(*args, **kwargs)

    prefill.prefill_chunk = counted  # type: ignore[method-assign]
    patched = second_chunk()
    assert calls["prefill_chunk"] == 2, "minf ran the chunk in every layer"
    error = rel_l2(patched, unpatched)
    print(f"second chunk (8K after 24K) with whole-prompt windows: logits rel L2 {error:.2e}")
    assert error < BF16_TOLERANCE


def count_calls(prefill: minf.Prefill) -> Dict[str, int]:
    calls = {"prefill": 0}
    original = prefill.prefill

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["prefill"] += 1
        return original(*args, **kwargs)

    prefill.prefill = counted  # type: ignore[method-assign]
    return calls


def test_hf_generate_16_tokens_after_a_128k_prefill():
    model = llama()
    seq = 131072
    ids = torch.randint(0, 1024, (1, seq), device="cuda", generator=torch.Generator(device="cuda").manual_seed(SEED))
    with tempfile.TemporaryDirectory() as tmp:
        prefill = minf.hf.patch(model, shipped_layers(os.path.join(tmp, "llama.json"), (16, 17)))
    calls = count_calls(prefill)
    with torch.no_grad():
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                                   do_sample=False)
    print(f"generate after a 128K prefill: {generated.shape[1] - seq} new tokens, "
          f"{calls['prefill']} minf prefill calls")
    assert generated.shape == (1, seq + 16)
    assert torch.equal(generated[:, :seq], ids)
    assert calls["prefill"] == 2, "the prefill ran on minf, the decoding steps on SDPA"


def test_hf_dump_qkv_writes_what_the_runtime_reads():
    safetensors = pytest.importorskip("safetensors.torch", reason="dump_qkv needs safetensors")
    model = llama()
    ids = torch.randint(0, 1024, (1, 300), device="cuda")
    with tempfile.TemporaryDirectory() as tmp:
        files = minf.hf.dump_qkv(model, ids, tmp, layers=[1])
        assert files == [os.path.join(tmp, "layer_1.safetensors")]
        tensors = safetensors.load_file(files[0])
        with safetensors.safe_open(files[0], framework="pt") as f:
            assert f.metadata()["layout"] == "bshd"
    assert tensors["q"].shape == (1, 300, 32, 128) and tensors["k"].shape == (1, 300, 8, 128)
    assert tensors["v"].shape == (1, 300, 8, 128) and tensors["q"].dtype == torch.bfloat16
    # The dumped layer's attention equals the model's: minf on the dump vs SDPA on the same tensors.
    out = minf.attention(*(tensors[n].cuda() for n in ("q", "k", "v")))
    reference, _ = masked_reference(*(tensors[n].cuda() for n in ("q", "k", "v")), "bshd", causal)
    assert rel_l2(out, reference) < BF16_TOLERANCE
    assert model.config._attn_implementation == "sdpa", "the implementation is restored"


def minf_binary() -> Optional[str]:
    path = os.environ.get("MINF_BIN", os.path.join(ROOT, ".gpu", "bin", "minf"))
    return path if os.path.exists(path) else None


def test_one_llama_layer_at_128k_from_python_within_5_percent_of_rust():
    """The same call (layer 16 of the shipped Llama-3-8B-262K config, 32/8 heads, 128K tokens, the
    same inputs) timed from Python (minf.Prefill.prefill, CUDA events, median) and from Rust
    (`minf bench --inputs` on a dump of the same tensors: Prefill::prefill_timed, median)."""
    safetensors = pytest.importorskip("safetensors.torch", reason="the comparison writes the inputs as safetensors")
    binary = minf_binary()
    if binary is None:
        pytest.skip("the Rust side runs the minf CLI: build the bundle (scripts/gpu-bundle.sh) or set MINF_BIN")
    seq, reps = 131072, 10
    q, k, v = random_qkv(seq, 32, 8, 128, "bshd")
    with tempfile.TemporaryDirectory() as tmp:
        config = shipped_layers(os.path.join(tmp, "layer16.json"), (16,))
        prefill = minf.Prefill(config, heads=32, kv_heads=8, head_dim=128, dense_below=0)
        for _ in range(3):
            prefill.prefill(0, q, k, v)
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            prefill.prefill(0, q, k, v)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        python_ms = sorted(times)[reps // 2]
        inputs = os.path.join(tmp, "qkv.safetensors")
        safetensors.save_file({"q": q.cpu(), "k": k.cpu(), "v": v.cpu()}, inputs, metadata={"layout": "bshd"})
        records = os.path.join(tmp, "rust.json")
        command = [binary, "bench", "--inputs", inputs, "--patterns", f"config:{LLAMA_CONFIG}:16",
                   "--reps", str(reps), "--json", records]
        subprocess.run(command, check=True, cwd=ROOT)
        with open(records) as f:
            rust_ms = [r for r in json.load(f) if r["pattern"].startswith("config")][0]["total_ms"]
    ratio = python_ms / rust_ms
    print(f"one Llama-3-8B layer at 128K: Python {python_ms:.2f} ms, Rust {rust_ms:.2f} ms, ratio {ratio:.3f}")
    assert ratio <= 1.05
