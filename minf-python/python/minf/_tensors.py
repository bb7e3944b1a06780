"""Checks of the tensors passed to minf, before anything is launched.

Tensors are read through the attributes every ``torch.Tensor`` has (``data_ptr()``, ``shape``,
``stride()``, ``dtype``, ``device``), so the checks run, and are tested, without torch. Each
tensor is described to the native module as ``(data_ptr, shape, strides)`` in the logical
``[batch, seq, heads, head_dim]`` order minf's kernels use.
"""

import math
import struct
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from . import _minf

#: Head dimensions minf's kernels are generated for (the code generator's list).
HEAD_DIMS: Tuple[int, ...] = tuple(_minf.HEAD_DIMS)
#: The largest integer the native functions take (a Rust ``usize``).
MAX_INT = 2 ** (8 * struct.calcsize("P")) - 1
#: The layouts a 4-D tensor may have.
LAYOUTS: Tuple[str, ...] = ("bshd", "bhsd")
_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "f16"}
#: Rows of head_dim elements must start on 16-byte boundaries: strides in multiples of 8 elements.
_STRIDE_MULTIPLE = 8

Description = Tuple[int, Tuple[int, int, int, int], Tuple[int, int, int, int]]


class Tensor4(NamedTuple):
    """One checked 4-D tensor in minf's logical order."""

    name: str
    dtype: str
    device_index: int
    data_ptr: int
    #: ``[batch, seq, heads, head_dim]``.
    shape: Tuple[int, int, int, int]
    #: Element strides in the same order.
    strides: Tuple[int, int, int, int]

    def description(self) -> Description:
        """What the native module takes: ``(data_ptr, shape, strides)``."""
        return (self.data_ptr, self.shape, self.strides)

    def byte_span(self) -> Tuple[int, int]:
        """The bytes from the first element to past the last (16-bit elements)."""
        last = sum((n - 1) * s for n, s in zip(self.shape, self.strides))
        return (self.data_ptr, self.data_ptr + 2 * (last + 1))


def _is_tensor_like(value: Any) -> bool:
    return all(hasattr(value, attribute) for attribute in ("data_ptr", "shape", "stride", "dtype", "device"))


def dtype_name(tensor: Any) -> str:
    """``"bf16"`` or ``"f16"`` for a tensor minf takes; anything else raises TypeError."""
    name = str(tensor.dtype)
    if name not in _DTYPES:
        raise TypeError(f"dtype {name}: minf takes torch.bfloat16 and torch.float16 tensors")
    return _DTYPES[name]


def check_device(name: str, tensor: Any) -> int:
    """The CUDA device index of ``tensor``; raises for a tensor that is not on a CUDA device."""
    device = tensor.device
    kind = getattr(device, "type", str(device))
    if kind != "cuda":
        raise ValueError(
            f"{name} is on the {kind} device: minf runs on CUDA tensors only (move it with .cuda() or .to('cuda'))"
        )
    index = getattr(device, "index", None)
    return 0 if index is None else int(index)


def check_layout(layout: str) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(
            f"layout {layout!r}: allowed 'bshd' ([batch, seq, heads, head_dim]) "
            "and 'bhsd' ([batch, heads, seq, head_dim])"
        )
    return layout


def tensor4(name: str, tensor: Any, layout: str) -> Tensor4:
    """Checks one attention tensor (CUDA, bf16 or f16, 4-D, contiguous last dimension, 16-byte
    aligned rows) and returns it in ``[batch, seq, heads, head_dim]`` order."""
    if not _is_tensor_like(tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (CUDA, bfloat16 or float16, 4-D), got {type(tensor).__name__}"
        )
    device_index = check_device(name, tensor)
    try:
        dtype = dtype_name(tensor)
    except TypeError as error:
        raise TypeError(f"{name} has {error}") from None
    shape = tuple(int(n) for n in tensor.shape)
    strides = tuple(int(s) for s in tensor.stride())
    dims = "[batch, seq, heads, head_dim]" if layout == "bshd" else "[batch, heads, seq, head_dim]"
    if len(shape) != 4:
        raise ValueError(f"{name} has shape {list(shape)}: layout {layout!r} needs 4 dimensions {dims}")
    if shape[3] not in HEAD_DIMS:
        allowed = ", ".join(map(str, HEAD_DIMS))
        raise ValueError(f"{name} has head_dim {shape[3]} (shape {list(shape)}): allowed {allowed}")
    if strides[3] != 1:
        raise ValueError(
            f"{name} has strides {list(strides)}: its last dimension (head_dim) must be contiguous (stride 1); "
            "call .contiguous()"
        )
    if any(s < 0 for s in strides):
        raise ValueError(f"{name} has strides {list(strides)}: negative strides are not allowed")
    # Dimensions of size 1 are never stepped over, so their stride does not matter.
    misaligned = [s for n, s in zip(shape[:3], strides[:3]) if n > 1 and s % _STRIDE_MULTIPLE]
    data_ptr = int(tensor.data_ptr())
    if misaligned or data_ptr % 16:
        raise ValueError(
            f"{name} has strides {list(strides)} at address {data_ptr:#x}: rows must start on 16-byte boundaries "
            f"(strides in multiples of {_STRIDE_MULTIPLE} elements and an aligned start); call .contiguous()"
        )
    strides = tuple(s if n > 1 else 0 for n, s in zip(shape, strides))
    strides = strides[:3] + (1,)
    if layout == "bhsd":
        shape = (shape[0], shape[2], shape[1], shape[3])
        strides = (strides[0], strides[2], strides[1], strides[3])
    return Tensor4(name, dtype, device_index, data_ptr, shape, strides)  # type: ignore[arg-type]


def check_qkv(q: Any, k: Any, v: Any, layout: str) -> Tuple[Tensor4, Tensor4, Tensor4]:
    """Checks q, k and v of one call: each as :func:`tensor4`, one device and dtype, the same
    batch and head_dim, ``k`` and ``v`` of one shape, key/value heads dividing query heads and
    ``q_len <= kv_len`` (the queries are the last ``q_len`` positions)."""
    check_layout(layout)
    qt, kt, vt = tensor4("q", q, layout), tensor4("k", k, layout), tensor4("v", v, layout)
    for t in (kt, vt):
        if t.device_index != qt.device_index:
            raise ValueError(f"q is on cuda:{qt.device_index} but {t.name} on cuda:{t.device_index}: use one device")
        if t.dtype != qt.dtype:
            raise TypeError(f"q is {qt.dtype} but {t.name} is {t.dtype}: q, k and v must have one dtype")
    batch, q_len, heads, head_dim = qt.shape
    kv_batch, kv_len, kv_heads, kv_dim = kt.shape
    if kt.shape != vt.shape:
        raise ValueError(f"k has shape {_logical(kt, layout)} but v has {_logical(vt, layout)}: they must be equal")
    if (kv_batch, kv_dim) != (batch, head_dim):
        raise ValueError(
            f"q has shape {_logical(qt, layout)} and k {_logical(kt, layout)}: batch and head_dim must be equal"
        )
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q has {heads} heads and k/v {kv_heads}: the key/value heads must divide the query heads")
    if q_len > kv_len:
        raise ValueError(
            f"q has {q_len} positions but k/v {kv_len}: allowed q_len <= kv_len "
            "(the queries are the last q_len positions)"
        )
    return qt, kt, vt


def _logical(t: Tensor4, layout: str) -> List[int]:
    """The shape as the caller wrote it."""
    b, s, h, d = t.shape
    return [b, s, h, d] if layout == "bshd" else [b, h, s, d]


def check_out(out: Any, q: Tensor4, layout: str, inputs: Sequence[Tensor4] = ()) -> Tensor4:
    """Checks a caller-given output tensor against q: the same shape, dtype and device, no
    broadcast dimension (stride 0 over more than one entry: several outputs would share memory),
    and no byte in common with ``inputs`` (the kernels read them while they write out)."""
    ot = tensor4("out", out, layout)
    start, end = ot.byte_span()
    for tensor in inputs:
        first, past = tensor.byte_span()
        if start < past and first < end:
            raise ValueError(
                f"out overlaps {tensor.name} in memory: the kernels read {tensor.name} while they write out; "
                "pass a separate output tensor (or none)"
            )
    if any(n > 1 and s == 0 for n, s in zip(ot.shape, ot.strides)):
        raise ValueError(
            f"out has shape {_logical(ot, layout)} and a dimension of stride 0 (a broadcast view, e.g. from "
            "expand()): every output element needs its own memory; allocate out with torch.empty"
        )
    if (ot.shape, ot.dtype, ot.device_index) != (q.shape, q.dtype, q.device_index):
        raise ValueError(
            f"out has shape {_logical(ot, layout)}, {ot.dtype} on cuda:{ot.device_index} but q has "
            f"{_logical(q, layout)}, {q.dtype} on cuda:{q.device_index}: they must be equal"
        )
    return ot


def index_tensor(name: str, tensor: Any, dims: Sequence[str], device_index: int) -> Tuple[int, List[int]]:
    """Checks an int32 index tensor (CUDA on ``device_index``, contiguous, ``len(dims)``-D) and
    returns ``(data_ptr, shape)``."""
    if not _is_tensor_like(tensor):
        raise TypeError(f"{name} must be a torch.Tensor (CUDA, int32), got {type(tensor).__name__}")
    index = check_device(name, tensor)
    if index != device_index:
        raise ValueError(f"{name} is on cuda:{index} but q on cuda:{device_index}: use one device")
    if str(tensor.dtype) != "torch.int32":
        raise TypeError(f"{name} has dtype {tensor.dtype}: index tensors are torch.int32")
    shape = [int(n) for n in tensor.shape]
    if len(shape) != len(dims):
        raise ValueError(f"{name} has shape {shape}: it needs {len(dims)} dimensions [{', '.join(dims)}]")
    expected, step = [], 1
    for n in reversed(shape):
        expected.insert(0, step)
        step *= max(n, 1)
    strides = [int(s) for s in tensor.stride()]
    if any(s != e for n, s, e in zip(shape, strides, expected) if n > 1):
        raise ValueError(f"{name} has strides {strides}: index tensors must be contiguous; call .contiguous()")
    return int(tensor.data_ptr()), shape


def allocation_shape(shape: Sequence[int], layout: str) -> Tuple[int, ...]:
    """The caller's shape of a ``[batch, seq, heads, head_dim]`` tensor in ``layout``."""
    b, s, h, d = shape
    return (b, s, h, d) if layout == "bshd" else (b, h, s, d)


def optional_int(name: str, value: Optional[Any]) -> Optional[int]:
    """``value`` as a non-negative int that the native functions take (at most :data:`MAX_INT`;
    None stays None); raises TypeError or ValueError naming ``name`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    if value > MAX_INT:
        raise ValueError(f"{name} {value} is too large: at most {MAX_INT}")
    return value


def softmax_scale(value: Any) -> float:
    """``value`` as a softmax scale: a number that is positive and finite as a float32, the
    kernels' type (1e300 would become infinity and 1e-60 zero)."""
    scale = float(value)
    try:
        as_f32 = struct.unpack("f", struct.pack("f", scale))[0]
    except OverflowError:
        as_f32 = math.inf
    if not (math.isfinite(as_f32) and as_f32 > 0):
        raise ValueError(
            f"softmax_scale {scale}: it must be positive and finite as a float32 (between 1e-45 and 3.4028235e+38)"
        )
    return scale
