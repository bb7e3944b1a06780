"""Hugging Face transformers: minf's sparse prefill in a model, with one call.

:func:`patch` registers minf as an attention function in transformers' own registry
(``AttentionInterface``, under the name ``"minf"``, with SDPA's mask function, which also leaves
out the plain causal mask of a chunk after a cached prefix) and switches the model to it. Long
prompts, and chunks of a prompt after a cached prefix (multi-turn chat, chunked prefill), then run
minf's per-head sparse attention (a :class:`minf.Prefill`, layer ``module.layer_idx``); decoding
(one query), short contexts, padded batches and anything else minf does not take run PyTorch SDPA
exactly as an unpatched model on SDPA would (a model loaded with eager attention agrees to
rounding).
``model.generate(...)`` works unchanged. Llama, Mistral and Qwen2 families (any model whose
attention calls transformers' attention interface with ``layer_idx`` set).

:func:`dump_qkv` writes the post-rotary queries, keys and values of chosen layers as safetensors
files that ``minf bench --inputs`` and the Rust ``load_safetensors`` read.
"""

import math
import operator
import os
import threading
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from ._api import Prefill
from ._tensors import HEAD_DIMS

#: The name minf's attention function is registered under.
ATTENTION_NAME = "minf"
#: The attention function of :func:`dump_qkv` (SDPA that also saves its inputs).
DUMP_NAME = "minf_dump_qkv"

PathLike = Union[str, "os.PathLike[str]"]


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_shape(model: Any) -> Dict[str, int]:
    """The attention shape of a transformers model: ``layers``, ``heads``, ``kv_heads``, ``head_dim``."""
    config = _text_config(model)
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "layers": int(config.num_hidden_layers),
        "heads": heads,
        "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(head_dim),
    }


def _sdpa() -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def _attention_modules(model: Any) -> List[Any]:
    return [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int) and hasattr(m, "o_proj")]


def _checked_attention_modules(model: Any, what: str) -> List[Any]:
    """The model's attention modules; a model without any (e.g. GPT-2, whose attention has no
    ``o_proj``) raises ValueError saying that ``what`` cannot be done."""
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention modules with a layer_idx and an o_proj (the modules minf "
            f"recognises): {what}"
        )
    return modules


def _check_head_dim(model: Any, shape: Dict[str, int]) -> None:
    if shape["head_dim"] not in HEAD_DIMS:
        raise ValueError(
            f"{type(model).__name__} has head_dim {shape['head_dim']}: minf's kernels take head_dim "
            f"{', '.join(map(str, HEAD_DIMS))}, so minf cannot patch it"
        )


class _Patch:
    """What a patched attention module carries: the Prefill and when to use it."""

    def __init__(self, prefill: Prefill, previous: str):
        self.prefill = prefill
        self.previous = previous

    def takes(self, module: Any, query: Any, key: Any, attention_mask: Any, dropout: float, scaling: Any,
              is_causal: Any, kwargs: Dict[str, Any]) -> bool:
        """Whether minf runs this call: a causal prefill (a whole prompt, or a chunk of at least
        ``dense_chunks_below`` queries after a cached prefix) of one unpadded sequence set with
        enough keys, on CUDA in bf16/f16, with the default softmax scale and no sliding window."""
        q_len, kv_len = query.shape[2], key.shape[2]
        head_dim = query.shape[3]
        return (
            attention_mask is None
            and 1 < q_len <= kv_len
            and kv_len >= self.prefill.dense_below
            and (q_len == kv_len or q_len >= self.prefill.dense_chunks_below)
            and query.is_cuda
            and str(query.dtype) in ("torch.bfloat16", "torch.float16")
            and not (dropout and module.training)
            and (scaling is None or math.isclose(float(scaling), head_dim ** -0.5, rel_tol=1e-6))
            and is_causal is not False
            and getattr(module, "is_causal", True)
            and kwargs.get("sliding_window") is None
            and 0 <= module.layer_idx < self.prefill.shape[0]
        )


def _bottom_right_causal(q_len: int, kv_len: int, device: Any) -> Any:
    """``[q_len, kv_len]`` bool: query ``i`` (at position ``kv_len - q_len + i``) sees keys up to
    its own position."""
    import torch

    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return torch.arange(kv_len, device=device)[None, :] <= rows


# What the mask function of the current forward pass left out, per thread: the (q_len, kv_len) of a
# chunk whose plain bottom-right causal mask it dropped, or None. A None mask with fewer queries
# than keys is otherwise SDPA's own skip: causal aligned top-left (a static cache's prefill, whose
# cache slots past the prompt are empty). A forward pass may call the mask function more than once
# before its first layer (a model with full and sliding-window layers builds both masks): the record
# is reset by the first call after a layer has run, so a later call of the same pass (whose mask,
# e.g. the window's, is kept) does not erase what an earlier one left out.
_LEFT_OUT = threading.local()


def _left_out_chunk() -> Optional[Tuple[int, int]]:
    return getattr(_LEFT_OUT, "chunk", None)


def _chunk_aware_sdpa_mask(*args: Any, **kwargs: Any) -> Any:
    """SDPA's mask function, except for a chunk after a cached prefix (``1 < q_len < kv_len``)
    whose mask is exactly causal, bottom-right aligned, in every batch entry (no padding, no
    window): that mask comes back as None, like an unpadded whole prompt's, and the chunk's shape is
    recorded for the attention function (minf runs the chunk; SDPA gets the mask rebuilt). Checking
    the mask waits for the device once per forward pass of a chunk, not per layer."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if getattr(_LEFT_OUT, "layers_ran", True):
        _LEFT_OUT.chunk = None
        _LEFT_OUT.layers_ran = False
    mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)
    if mask is None or getattr(mask, "dim", lambda: 0)() != 4 or str(mask.dtype) != "torch.bool":
        return mask
    q_len, kv_len = mask.shape[-2], mask.shape[-1]
    if not 1 < q_len < kv_len:
        return mask
    import torch

    if torch.equal(mask, _bottom_right_causal(q_len, kv_len, mask.device).expand_as(mask)):
        _LEFT_OUT.chunk = (q_len, kv_len)
        return None
    return mask


def _minf_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                    scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs: Any) -> Any:
    """transformers attention function: minf's Prefill for long causal prefills and chunks, SDPA
    otherwise. ``query`` is ``[batch, heads, q_len, head_dim]``, ``key``/``value`` ``[batch,
    kv_heads, kv_len, head_dim]`` (post-rotary; a chunk's queries are the last ``q_len`` of the
    ``kv_len`` positions); returns ``([batch, q_len, heads, head_dim], None)`` like SDPA's."""
    import torch

    _LEFT_OUT.layers_ran = True
    patch = getattr(module, "_minf_patch", None)
    q_len, kv_len = query.shape[2], key.shape[2]
    # Fewer queries than keys and no mask: a chunk whose bottom-right mask the mask function left
    # out, or SDPA's own top-left causal skip (a static cache's prefill: the queries are the first
    # q_len positions and the slots after them are empty, so the first q_len keys are the prompt).
    chunk = attention_mask is None and 1 < q_len < kv_len and _left_out_chunk() == (q_len, kv_len)
    if attention_mask is None and 1 < q_len < kv_len and not chunk:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        kv_len = q_len
    if patch is not None and patch.takes(module, query, key, attention_mask, dropout, scaling, is_causal, kwargs):
        batch, heads, _, head_dim = query.shape
        out = torch.empty((batch, q_len, heads, head_dim), dtype=query.dtype, device=query.device)
        if q_len == kv_len:
            patch.prefill.prefill(module.layer_idx, query, key, value, layout="bhsd", out=out.transpose(1, 2))
        else:
            patch.prefill.prefill_chunk(module.layer_idx, query, key, value, layout="bhsd", out=out.transpose(1, 2))
        return out, None
    if chunk:
        # A chunk whose causal mask _chunk_aware_sdpa_mask left out: SDPA needs it back (its own
        # is_causal aligns the diagonal top-left).
        attention_mask = _bottom_right_causal(q_len, kv_len, query.device)[None, None]
    return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                   is_causal=is_causal, **kwargs)


def _register(name: str, function: Any, mask: Any = None) -> None:
    """Registers ``function`` under ``name`` with ``mask`` as its mask function (default: SDPA's,
    which is None for an unpadded causal whole prompt and a mask otherwise)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, mask or ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _set_implementation(model: Any, name: str) -> None:
    """Switches the model to the registered attention function ``name`` (``set_attn_implementation``,
    or the config field the attention modules read where the model has no such method). A model
    whose attention does not go through transformers' attention interface cannot switch: that
    raises ValueError rather than leaving the model silently unpatched."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name
    if getattr(model.config, "_attn_implementation", None) != name:
        raise ValueError(
            f"{type(model).__name__} did not switch to the attention function {name!r}: its attention does not "
            "go through transformers' AttentionInterface, so minf cannot patch it"
        )


def patch(
    model: Any,
    config: Optional[PathLike] = None,
    *,
    starting_layer: int = 0,
    dense_below: Optional[int] = None,
    dense_chunks_below: Optional[int] = None,
    block_sparse_top_k: Optional[int] = None,
) -> Prefill:
    """Makes ``model`` (a transformers causal LM) prefill with minf's per-head sparse attention.

    ``config`` is a MInference JSON config for the model (a path), or None for MInference's
    default (every head vertical-slash, 1000 columns and 6096 diagonals); it must have the
    model's number of layers. ``starting_layer``, ``dense_below`` (default 32768: shorter prompts
    run SDPA), ``dense_chunks_below`` (default 512: shorter chunks after a cached prefix run SDPA)
    and ``block_sparse_top_k`` as in :class:`minf.Prefill`. Returns the
    :class:`minf.Prefill` the model now uses; :func:`unpatch` undoes the patch.
    """
    shape = model_shape(model)
    _check_head_dim(model, shape)
    prefill = Prefill(
        config,
        layers=shape["layers"],
        heads=shape["heads"],
        kv_heads=shape["kv_heads"],
        head_dim=shape["head_dim"],
        starting_layer=starting_layer,
        dense_below=dense_below,
        dense_chunks_below=dense_chunks_below,
        block_sparse_top_k=block_sparse_top_k,
    )
    modules = _checked_attention_modules(model, "minf cannot patch it")
    previous = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if previous == ATTENTION_NAME:
        earlier = getattr(modules[0], "_minf_patch", None)
        previous = earlier.previous if earlier is not None else "sdpa"
    _register(ATTENTION_NAME, _minf_attention, _chunk_aware_sdpa_mask)
    _set_implementation(model, ATTENTION_NAME)
    state = _Patch(prefill, previous)
    for module in modules:
        module._minf_patch = state
    return prefill


def unpatch(model: Any) -> None:
    """Undoes :func:`patch`: the model's previous attention implementation comes back. A model
    that is not patched is left as it is."""
    previous = None
    for module in _attention_modules(model):
        state = module.__dict__.pop("_minf_patch", None)
        if state is not None:
            previous = state.previous
    if previous is not None:
        _set_implementation(model, previous)


def _dump_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """SDPA that first hands its inputs to the module's dump writer, if it has one."""
    writer = getattr(module, "_minf_dump", None)
    if writer is not None:
        writer(module.layer_idx, query, key, value)
    return _sdpa()(module, query, key, value, attention_mask, **kwargs)


def dump_qkv(model: Any, input_ids: Any, path: PathLike, layers: Optional[Iterable[int]] = None) -> List[str]:
    """Runs ``model`` on ``input_ids`` (one sequence) and writes each chosen layer's post-rotary
    ``q`` ``[1, seq, heads, head_dim]``, ``k`` and ``v`` ``[1, seq, kv_heads, head_dim]`` (the
    model's dtype, metadata ``layout = "bshd"``) to ``path/layer_<L>.safetensors``; a single layer
    may name the file itself (``path`` ending in ``.safetensors``). ``layers`` defaults to all.
    Returns the files written. ``minf bench --inputs FILE`` and ``minf_runtime::load_safetensors``
    read them. Attention runs SDPA while dumping; the model's implementation is restored after.

    Raises TypeError for ``input_ids`` that is not a torch tensor or ``layers`` that is not an
    iterable of integers, ValueError for layers out of range and for a model without attention
    modules that have a ``layer_idx`` (as :func:`patch`) or when a chosen layer's attention did
    not run through transformers' attention interface (its file could not be written).
    """
    import torch
    from safetensors.torch import save_file

    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, [1, seq], got {type(input_ids).__name__}")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids has shape {list(input_ids.shape)}: dump_qkv takes one sequence, [1, seq]")
    count = model_shape(model)["layers"]
    chosen = sorted(set(range(count) if layers is None else _layer_list(layers)))
    bad = [layer for layer in chosen if not 0 <= layer < count]
    if bad or not chosen:
        raise ValueError(f"layers {bad or chosen}: the model has layers 0 to {count - 1}")
    modules = _checked_attention_modules(model, "dump_qkv cannot capture its queries, keys and values")
    path = os.fspath(path)
    single = path.endswith(".safetensors")
    if single and len(chosen) != 1:
        raise ValueError(f"{path} names one file but {len(chosen)} layers are chosen: pass a directory")
    if not single:
        os.makedirs(path, exist_ok=True)
    written: List[str] = []
    done: Set[int] = set()

    def write(layer: int, query: Any, key: Any, value: Any) -> None:
        if layer not in chosen:
            return
        file = path if single else os.path.join(path, f"layer_{layer}.safetensors")
        tensors = {name: t.transpose(1, 2).contiguous().cpu() for name, t in (("q", query), ("k", key), ("v", value))}
        save_file(tensors, file, metadata={"layout": "bshd", "layer": str(layer), "model": type(model).__name__})
        written.append(file)
        done.add(layer)

    previous = getattr(model.config, "_attn_implementation", None) or "sdpa"
    _register(DUMP_NAME, _dump_attention)
    for module in modules:
        module._minf_dump = write
    try:
        _set_implementation(model, DUMP_NAME)
        # The decoder alone: the LM head's logits (seq x vocab) are not needed.
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        with torch.no_grad():
            decoder(input_ids=input_ids, use_cache=False)
    finally:
        for module in modules:
            module.__dict__.pop("_minf_dump", None)
        _set_implementation(model, previous)
    missing = [layer for layer in chosen if layer not in done]
    if missing:
        raise ValueError(
            f"{type(model).__name__}: layers {missing} were not written (their attention did not run through "
            f"transformers' attention interface with a matching layer_idx); written: {written}"
        )
    return written


def _layer_list(layers: Any) -> List[int]:
    """``layers`` as a list of ints: an iterable of integers (not one int, not floats)."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be an iterable of layer indices (integers), got {type(layers).__name__}")
    chosen = []
    for layer in layers:
        if isinstance(layer, bool):
            raise TypeError(f"layers must hold integers, got {layer!r}")
        try:
            chosen.append(operator.index(layer))
        except TypeError:
            raise TypeError(f"layers must hold integers, got {type(layer).__name__} {layer!r}") from None
    return chosen
