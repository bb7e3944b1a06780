"""Helpers the bench scripts share: an event-timed median, and MInference's kernels imported
without its package's heavyweight `__init__` (which would pull in vLLM and friends)."""

import importlib
import os
import sys
import types

import torch


def time_ms(fn, iters=20, warmup=5):
    """Median of `iters` CUDA-event-timed runs of `fn` after `warmup` untimed ones, in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


# Packages MInference switches to when it finds them; blocked so that its Triton kernels run.
BLOCKED_PACKAGES = ("sgl_kernel", "vllm_flash_attn", "vllm")


class _Availability(tuple):
    """A `(found, version)` pair that is true only when the package was found. transformers 5's
    `_is_package_available` returns the pair, which is always true, and MInference tests the
    result as a bool (`if _is_package_available("kivi_gemv"): import kivi_gemv`)."""

    def __bool__(self):
        return bool(self[0])


def _hide_blocked_packages():
    """Makes transformers' `_is_package_available` report the blocked packages as absent and its
    pairs test false for absent packages. `minference.modules` imports `kivi_gemv` and vLLM where
    that check is true, and an installed distribution can pass it while its import fails."""
    try:
        import_utils = importlib.import_module("transformers.utils.import_utils")
    except ImportError:
        return
    original = getattr(import_utils, "_is_package_available", None)
    if original is None or getattr(original, "_minf_blocked", False):
        return
    returns_pairs = isinstance(original("packaging"), tuple)

    def is_package_available(pkg_name, *args, **kwargs):
        if pkg_name in BLOCKED_PACKAGES:
            return_version = kwargs.get("return_version", args[0] if args else False)
            if returns_pairs or return_version:
                return _Availability((False, "N/A"))
            return False
        result = original(pkg_name, *args, **kwargs)
        return _Availability(result) if isinstance(result, tuple) else result

    is_package_available._minf_blocked = True
    import_utils._is_package_available = is_package_available


def import_minference(site="/tmp/site", modules=("pit_sparse_flash_attention_v2",), package="ops"):
    """MInference 0.1.6's `minference.<package>.<name>` modules (`package` "ops" or "modules") from
    its install under `site`, with the packages it would otherwise switch to (sgl_kernel, vLLM)
    blocked, so its Triton kernels run."""
    for blocked in BLOCKED_PACKAGES:
        sys.modules[blocked] = None
    if package == "modules":
        _hide_blocked_packages()
    if site not in sys.path:
        sys.path.insert(0, site)
    for name in ("minference", "minference.ops", "minference.modules"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(site, *name.split("."))]
            sys.modules[name] = module
    return {name: importlib.import_module(f"minference.{package}.{name}") for name in modules}
