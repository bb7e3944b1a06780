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


def import_minference(site="/tmp/site", modules=("pit_sparse_flash_attention_v2",), package="ops"):
    """MInference 0.1.6's `minference.<package>.<name>` modules (`package` "ops" or "modules") from
    its install under `site`, with the packages it would otherwise switch to (sgl_kernel, vLLM)
    blocked, so its Triton kernels run."""
    for blocked in ("sgl_kernel", "vllm_flash_attn", "vllm"):
        sys.modules[blocked] = None
    if site not in sys.path:
        sys.path.insert(0, site)
    for name in ("minference", "minference.ops", "minference.modules"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(site, *name.split("."))]
            sys.modules[name] = module
    return {name: importlib.import_module(f"minference.{package}.{name}") for name in modules}
