"""``minf.attention`` and ``minf.Prefill``: minf's kernels on torch CUDA tensors, without copies,
on torch's current stream, without synchronising."""

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from . import _minf
from ._tensors import (
    Tensor4,
    allocation_shape,
    check_layout,
    check_out,
    check_qkv,
    index_tensor,
    optional_int,
    softmax_scale as check_softmax_scale,
)

#: The patterns of ``minf.attention`` and the keyword arguments each takes.
PATTERN_ARGS: Dict[str, Tuple[str, ...]] = {
    "dense": (),
    "a_shape": ("n_init", "n_local"),
    "vertical_slash": ("vertical_size", "slash_size", "block_count", "block_offset", "column_count", "column_index"),
    "block_sparse": ("top_k", "kv_num_blocks", "kv_indices"),
}
_VS_INDEX = ("block_count", "block_offset", "column_count", "column_index")
_VS_INDEX_DIMS = {
    "block_count": ("batch", "heads", "rows"),
    "block_offset": ("batch", "heads", "rows", "nnz_s"),
    "column_count": ("batch", "heads", "rows"),
    "column_index": ("batch", "heads", "rows", "nnz_v"),
}
_BS_INDEX = ("kv_num_blocks", "kv_indices")
_BS_INDEX_DIMS = {"kv_num_blocks": ("batch", "heads", "rows"), "kv_indices": ("batch", "heads", "rows", "capacity")}

Sizes = Union[int, Sequence[int]]
#: MInference's block-sparse top-k: key blocks kept per query block.
DEFAULT_TOP_K = 100


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - the checks above need no torch; this is reached with tensors only
        raise ImportError("minf's tensor functions need PyTorch (pip install torch)") from None
    return torch


def _stream(torch: Any, device_index: int) -> int:
    """The handle of torch's current stream on the device (0: the default stream)."""
    return int(torch.cuda.current_stream(device_index).cuda_stream)


def _pattern_kwargs(pattern: str, args: Dict[str, Any], q: Tensor4) -> Dict[str, Any]:
    """Checks ``pattern`` and its keyword arguments; returns what the native call takes."""
    if pattern not in PATTERN_ARGS:
        raise ValueError(f"pattern {pattern!r}: allowed {', '.join(repr(p) for p in PATTERN_ARGS)}")
    allowed = PATTERN_ARGS[pattern]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no pattern arguments"
        raise TypeError(f"pattern {pattern!r} takes {takes}; got {', '.join(unknown)}")
    heads = q.shape[2]
    if pattern == "a_shape":
        missing = [name for name in allowed if args.get(name) is None]
        if missing:
            raise TypeError(f"pattern 'a_shape' needs n_init and n_local (missing {', '.join(missing)})")
        n_init, n_local = optional_int("n_init", args["n_init"]), optional_int("n_local", args["n_local"])
        if n_local == 0:
            raise ValueError("n_local must be at least 1: the local window includes the diagonal")
        return {"n_init": n_init, "n_local": n_local}
    if pattern == "vertical_slash":
        given = [name for name in _VS_INDEX if args.get(name) is not None]
        sizes = [name for name in ("vertical_size", "slash_size") if args.get(name) is not None]
        if given and sizes:
            raise TypeError(
                "vertical_slash takes either vertical_size and slash_size (estimated) or the four index tensors"
            )
        if given:
            if len(given) != 4:
                raise TypeError(
                    f"vertical_slash with an index needs all of {', '.join(_VS_INDEX)} (got {', '.join(given)})"
                )
            index = [index_tensor(name, args[name], _VS_INDEX_DIMS[name], q.device_index) for name in _VS_INDEX]
            return {"vertical_slash_index": index}
        if len(sizes) != 2:
            raise TypeError(
                "pattern 'vertical_slash' needs vertical_size and slash_size, or the converted index tensors"
            )
        return {name: _per_head(name, args[name], heads) for name in ("vertical_size", "slash_size")}
    if pattern == "block_sparse":
        given = [name for name in _BS_INDEX if args.get(name) is not None]
        if given and args.get("top_k") is not None:
            raise TypeError("block_sparse takes either top_k (estimated) or kv_num_blocks and kv_indices")
        if given:
            if len(given) != 2:
                raise TypeError("block_sparse with an index needs both kv_num_blocks and kv_indices")
            index = [index_tensor(name, args[name], _BS_INDEX_DIMS[name], q.device_index) for name in _BS_INDEX]
            return {"block_sparse_index": index}
        top_k = optional_int("top_k", args.get("top_k"))
        if top_k is None:
            top_k = DEFAULT_TOP_K
        if top_k == 0:
            raise ValueError("top_k must be at least 1")
        return {"top_k": top_k}
    return {}


def _per_head(name: str, value: Sizes, heads: int) -> Sequence[int]:
    if isinstance(value, (list, tuple)):
        values = [optional_int(name, v) for v in value]
        if len(values) not in (1, heads):
            raise ValueError(f"{name} has {len(values)} entries: give one integer or one per query head ({heads})")
        return values  # type: ignore[return-value]
    return [optional_int(name, value)]  # type: ignore[list-item]


def attention(
    q: Any,
    k: Any,
    v: Any,
    pattern: str = "dense",
    *,
    layout: str = "bshd",
    lse: bool = False,
    softmax_scale: Optional[float] = None,
    out: Any = None,
    **pattern_args: Any,
) -> Any:
    """Causal attention of ``q``, ``k``, ``v`` with one sparse pattern for every head.

    Tensors are torch CUDA tensors, bfloat16 or float16, head_dim 64, 96, 128 or 256, any strides
    with a contiguous last dimension: ``layout="bshd"`` (``[batch, seq, heads, head_dim]``, the
    default) or ``"bhsd"`` (``[batch, heads, seq, head_dim]``, as SDPA and transformers use).
    ``k`` and ``v`` may have fewer heads than ``q`` (grouped-query attention, no copies). The queries
    are the last ``q_len`` positions of the ``kv_len`` keys (``q_len <= kv_len``).

    Patterns and their arguments (MInference's names):

    - ``"dense"``: every key up to the diagonal;
    - ``"a_shape"``: ``n_init`` sink tokens and a window of ``n_local`` keys ending at the
      diagonal (MInference's ``stream_llm``);
    - ``"vertical_slash"``: ``vertical_size`` key columns and ``slash_size`` diagonals per head
      (an int, or one per query head), estimated on the GPU from the last 64 queries like a config
      head; or an index MInference's ``convert_vertical_slash_indexes`` wrote: ``block_count``,
      ``block_offset``, ``column_count``, ``column_index`` (int32, ``[batch, heads, rows(, nnz)]``);
    - ``"block_sparse"``: ``top_k`` key blocks of 64 per 64-row query block (default 100),
      estimated on the GPU from mean-pooled blocks; or ``kv_num_blocks`` ``[batch, heads, rows]``
      and ``kv_indices`` ``[batch, heads, rows, capacity]`` (int32, ascending block ids).

    Vertical-slash and block-sparse calls on an index of at least 512 rows (32K queries) pick, per
    head and on the GPU, 128-row or 64-row kernels (sm_90a) from how much the index's rows share,
    as ``Prefill`` does; shorter ones run the default kernel.

    Returns a new tensor shaped like ``q`` in the same layout (or fills ``out``, which must not
    overlap the inputs), and with
    ``lse=True`` also the float32 log-sum-exp ``[batch, heads, q_len]`` (natural log, scaled
    scores). ``softmax_scale`` defaults to ``1 / sqrt(head_dim)`` and must be positive and finite
    as a float32 (the kernels' type). Runs on torch's current stream of the tensors' device and
    returns without waiting for the GPU. Forward only (no autograd).

    Raises TypeError or ValueError (saying what is wrong and what is allowed) before anything is
    launched, and MinfError for what the runtime finds (e.g. a shape its kernels do not take).
    """
    check_layout(layout)
    qt, kt, vt = check_qkv(q, k, v, layout)
    kwargs = _pattern_kwargs(pattern, pattern_args, qt)
    if softmax_scale is not None:
        softmax_scale = check_softmax_scale(softmax_scale)
    torch = _torch()
    batch, q_len, heads, _ = qt.shape
    with torch.cuda.device(qt.device_index):
        if out is None:
            out = torch.empty(allocation_shape(qt.shape, layout), dtype=q.dtype, device=q.device)
        ot = check_out(out, qt, layout, (qt, kt, vt))
        lse_tensor = torch.empty((batch, heads, q_len), dtype=torch.float32, device=q.device) if lse else None
        _minf.attention_into(
            qt.device_index,
            _stream(torch, qt.device_index),
            qt.dtype,
            qt.description(),
            kt.description(),
            vt.description(),
            ot.description(),
            pattern=pattern,
            lse=None if lse_tensor is None else (int(lse_tensor.data_ptr()), lse_tensor.numel()),
            softmax_scale=softmax_scale,
            **kwargs,
        )
    return (out, lse_tensor) if lse else out


class Prefill:
    """MInference's per-layer prefill under a per-head config, on torch tensors.

    ``config`` is one of MInference's JSON configs (a path; the file names of the models minf knows,
    e.g. ``Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json``, give the model shape) or
    None for MInference's default (every head vertical-slash, 1000 columns and 6096 diagonals).
    ``layers``, ``heads``, ``kv_heads`` and ``head_dim`` give the model's attention shape (needed
    unless the file name is a known model's): at least one layer, at most 1048576 head entries
    (layers × heads, the bound on a config's table) and a head_dim minf's kernels take (64, 96,
    128 or 256); anything else raises ValueError here, before any call. ``starting_layer`` runs
    the layers below it dense; prompts shorter than ``dense_below`` tokens (default 32768) run every head dense, and so do
    chunks of fewer than ``dense_chunks_below`` queries (default 512: estimating a chunk's indices
    reads all its keys, which costs about what that many queries' dense attention does);
    ``block_sparse_top_k`` (default 100) is the key blocks a block-sparse head keeps.

    The runtime state (head maps, indices and estimation scratch, reused across calls) is kept per
    CUDA device and stream the calls come from.
    """

    def __init__(
        self,
        config: Union[str, "os.PathLike[str]", None] = None,
        *,
        layers: Optional[int] = None,
        heads: Optional[int] = None,
        kv_heads: Optional[int] = None,
        head_dim: Optional[int] = None,
        starting_layer: int = 0,
        dense_below: Optional[int] = None,
        dense_chunks_below: Optional[int] = None,
        block_sparse_top_k: Optional[int] = None,
    ):
        self._native = _minf.Prefill(
            None if config is None else os.fspath(config),
            layers=optional_int("layers", layers),
            heads=optional_int("heads", heads),
            kv_heads=optional_int("kv_heads", kv_heads),
            head_dim=optional_int("head_dim", head_dim),
            starting_layer=optional_int("starting_layer", starting_layer),
            dense_below=optional_int("dense_below", dense_below),
            dense_chunks_below=optional_int("dense_chunks_below", dense_chunks_below),
            block_sparse_top_k=optional_int("block_sparse_top_k", block_sparse_top_k),
        )

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """``(layers, heads, kv_heads, head_dim)``."""
        return self._native.shape

    @property
    def dense_below(self) -> int:
        """Prompts shorter than this many tokens run every head dense."""
        return self._native.dense_below

    @property
    def dense_chunks_below(self) -> int:
        """Chunks of fewer queries run every head dense."""
        return self._native.dense_chunks_below

    @property
    def config(self) -> str:
        """The config file (or a description of the default)."""
        return self._native.source

    def layer_patterns(self, layer: int) -> list:
        """What each head of ``layer`` runs for a long prompt: ``(pattern, parameters)`` per head
        (``a_shape``: n_init, n_local; ``vertical_slash``: vertical_size, slash_size;
        ``block_sparse``: top_k; ``dense``: none)."""
        return self._native.layer_patterns(optional_int("layer", layer))

    def prefill(self, layer: int, q: Any, k: Any, v: Any, *, layout: str = "bshd", out: Any = None) -> Any:
        """Attention of every query head of ``layer`` with its configured pattern (indices
        estimated on the GPU). Tensors as in :func:`minf.attention`, with the model's head counts
        and head_dim. Returns a new tensor shaped like ``q`` (or fills ``out``); runs on torch's
        current stream without waiting for the GPU."""
        return self._run(layer, q, k, v, layout, out, None, False)

    def prefill_chunk(self, layer: int, q_chunk: Any, k_all: Any, v_all: Any, *, layout: str = "bshd",
                      out: Any = None, lse: bool = False) -> Any:
        """One chunk of a prompt after its prefix: ``q_chunk`` holds the chunk's ``q_len`` queries,
        ``k_all``/``v_all`` the ``kv_len`` keys and values of the prefix and the chunk (the chunk's
        last), ``1 <= q_len <= kv_len``; query ``i`` sits at position ``kv_len - q_len + i``. The
        chunk estimates its own indices; it runs dense below ``dense_below`` keys or
        ``dense_chunks_below`` queries. With
        ``lse=True`` also returns the float32 log-sum-exp ``[batch, heads, q_len]``."""
        return self._run(layer, q_chunk, k_all, v_all, layout, out, 0, lse)

    def prefill_chunked(self, layer: int, q: Any, k: Any, v: Any, chunk_tokens: int, *, layout: str = "bshd",
                        out: Any = None) -> Any:
        """A whole prompt chunk by chunk, ``chunk_tokens`` queries at a time (chunk ``c`` attends to
        the keys before its end), through :meth:`prefill_chunk`: per-chunk scratch bounded by the
        chunk. Each chunk reads ``q`` and writes ``out`` in place (through their strides, in either
        layout)."""
        chunk_tokens = optional_int("chunk_tokens", chunk_tokens)  # type: ignore[assignment]
        if not chunk_tokens:
            raise ValueError("chunk_tokens must be at least 1")
        return self._run(layer, q, k, v, layout, out, chunk_tokens, False)

    def _run(self, layer: int, q: Any, k: Any, v: Any, layout: str, out: Any, chunk: Optional[int],
             lse: bool) -> Any:
        layer = optional_int("layer", layer)  # type: ignore[assignment]
        if layer >= self.shape[0]:
            raise ValueError(f"layer {layer} is out of range: this Prefill has layers 0 to {self.shape[0] - 1}")
        check_layout(layout)
        qt, kt, vt = check_qkv(q, k, v, layout)
        _, heads, kv_heads, head_dim = self.shape
        if (qt.shape[2], kt.shape[2], qt.shape[3]) != (heads, kv_heads, head_dim):
            raise ValueError(
                f"q has {qt.shape[2]} heads, k/v {kt.shape[2]}, head_dim {qt.shape[3]}; this Prefill is for {heads} "
                f"query heads, {kv_heads} key/value heads and head_dim {head_dim}"
            )
        torch = _torch()
        batch, q_len = qt.shape[0], qt.shape[1]
        with torch.cuda.device(qt.device_index):
            if out is None:
                out = torch.empty(allocation_shape(qt.shape, layout), dtype=q.dtype, device=q.device)
            ot = check_out(out, qt, layout, (qt, kt, vt))
            lse_tensor = torch.empty((batch, heads, q_len), dtype=torch.float32, device=q.device) if lse else None
            self._native.prefill_into(
                qt.device_index,
                _stream(torch, qt.device_index),
                qt.dtype,
                layer,
                qt.description(),
                kt.description(),
                vt.description(),
                ot.description(),
                chunk=chunk,
                lse=None if lse_tensor is None else (int(lse_tensor.data_ptr()), lse_tensor.numel()),
            )
        return (out, lse_tensor) if lse else out

    def __repr__(self) -> str:
        layers, heads, kv_heads, head_dim = self.shape
        return (
            f"minf.Prefill({self.config!r}, layers={layers}, heads={heads}, kv_heads={kv_heads}, "
            f"head_dim={head_dim}, dense_below={self.dense_below})"
        )
