"""minf: dynamic sparse attention kernels for long-context prefill, generated and JIT-compiled.

This package needs neither torch nor a GPU to import: ``doctor()`` reports what minf finds on the
machine and ``warm()`` compiles kernels into the disk cache (``MINF_CACHE_DIR``) for any target.
With PyTorch, ``attention()`` and ``Prefill`` run minf's kernels on CUDA tensors without copies,
and ``minf.hf.patch(model)`` makes a transformers model prefill with them.
"""

from typing import Optional, Sequence, Union

from . import _minf
from ._api import PATTERN_ARGS, Prefill, attention
from ._minf import MinfError
from ._tensors import optional_int

__version__: str = _minf.__version__

__all__ = ["MinfError", "DoctorReport", "PATTERN_ARGS", "Prefill", "attention", "doctor", "warm", "__version__"]


class DoctorReport(dict):
    """What ``minf doctor`` reports, as a dict; ``str()`` gives the command's text.

    Keys: ``gpu`` (dict with ``name``, ``ordinal``, ``compute_capability``, ``driver_version``, or
    None) and ``gpu_error``; ``target_arch`` (e.g. ``"sm_90a"``, or None) and ``target``;
    ``nvrtc_path``, ``nvrtc_version`` and ``nvrtc_error``; ``cache_dir``, ``cache_size_bytes``,
    ``jit_enabled`` and ``cache_error``.
    """

    def __init__(self, fields: dict):
        self._text = fields.pop("text")
        super().__init__(fields)

    def __str__(self) -> str:
        return self._text


def doctor() -> DoctorReport:
    """The GPU (or why there is none), NVRTC, target architecture and kernel cache minf would use."""
    return DoctorReport(_minf.doctor())


Names = Union[str, Sequence[str], None]


def warm(
    arch: Names = None,
    patterns: Names = None,
    head_dims: Union[int, Sequence[int], None] = None,
    dtypes: Names = None,
    config: Optional[str] = None,
    jobs: Optional[int] = None,
    heads: Optional[int] = None,
    starting_layer: int = 0,
) -> dict:
    """Compiles kernels into the disk cache, like ``minf warm``.

    ``arch`` lists the targets (e.g. ``["sm_80", "sm_90a"]``; None: the current GPU's). Without
    ``config``, the default kernel set is filtered by ``patterns``, ``head_dims`` and ``dtypes``
    (None keeps all); with ``config`` (a per-head JSON config), exactly the kernels it needs are
    compiled (``heads`` and ``starting_layer`` as in ``minf warm``). The index kernels are always
    included. Returns a dict with ``compiled``, ``cached`` and ``failed`` counts, ``failures``
    (name, message) pairs, ``attention``, ``index``, ``arch``, ``cache_dir`` and ``seconds``.

    Raises ValueError or TypeError for bad arguments (naming the argument) and MinfError when the
    cache cannot be written, NVRTC is missing or no target can be picked.
    """
    if config is not None:
        import os

        config = os.fspath(config)
    if jobs is not None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) and not hasattr(jobs, "__index__"):
            raise TypeError(f"jobs must be an integer, got {type(jobs).__name__}")
        jobs = int(jobs)
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        # More jobs than kernels run as one job a kernel: the native call takes up to 2**63 - 1.
        jobs = min(jobs, 2**63 - 1)
    heads = optional_int("heads", heads)
    starting_layer = optional_int("starting_layer", starting_layer)  # type: ignore[assignment]
    return _minf.warm(
        arch=arch,
        patterns=patterns,
        head_dims=head_dims,
        dtypes=dtypes,
        config=config,
        jobs=jobs,
        heads=heads,
        starting_layer=starting_layer,
    )
