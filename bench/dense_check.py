"""Check and time minf's generated dense kernels from Python, next to PyTorch SDPA, on one GPU.

Independent of the Rust runtime: it loads CUBINs that were compiled elsewhere (a folder of
`<kernel>.cubin` + `<kernel>.json` as written by `cargo run -p minf-codegen --example render -- --all`
and compiled with NVRTC, or `minf warm` cache entries), launches them through the CUDA driver API
(ctypes), compares with a float64 reference, and times them against SDPA FLASH_ATTENTION and
CUDNN_ATTENTION in the same process.

    python3 bench/dense_check.py [KERNEL_DIR] [--check] [--bench] [--seqs 16384,65536] [--json OUT]
"""

import argparse
import ctypes
import glob
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import time_ms  # same folder

cuda = ctypes.CDLL("libcuda.so.1")


def check_cu(result, what):
    if result != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(result, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: {result} {name.value}")


class Kernel:
    def __init__(self, cubin_path, meta):
        self.meta = meta
        self.spec = meta["spec"]
        self.name = meta["kernel_name"]
        image = open(cubin_path, "rb").read()
        self.module = ctypes.c_void_p()
        check_cu(cuda.cuModuleLoadData(ctypes.byref(self.module), image), f"load {self.name}")
        self.func = ctypes.c_void_p()
        check_cu(cuda.cuModuleGetFunction(ctypes.byref(self.func), self.module, self.name.encode()), "get function")
        self.smem = meta["launch"]["shared_bytes"]
        self.threads = meta["launch"]["threads"]
        self.block_m = meta["launch"]["block_m"]
        check_cu(cuda.cuFuncSetAttribute(self.func, 8, self.smem), "set smem")

    def __call__(self, q, k, v, o, lse=None, scale=None):
        """q, o: logical [b, s, h, d] views (any strides, last contiguous); k, v: [b, s, hkv, d]."""
        b, s, h, d = q.shape
        hkv = k.shape[2]
        scale = scale if scale is not None else 1.0 / math.sqrt(d)
        strides = []
        for t in (q, k, v, o):
            assert t.stride(3) == 1
            strides += [t.stride(0), t.stride(1), t.stride(2)]
        params = struct.pack(
            "<5Q12q3i2fi",
            q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), 0 if lse is None else lse.data_ptr(),
            *strides, s, h, h // hkv, scale * math.log2(math.e), scale, 0,
        )
        buf = ctypes.create_string_buffer(params, len(params))
        args = (ctypes.c_void_p * 1)(ctypes.cast(buf, ctypes.c_void_p))
        stream = torch.cuda.current_stream().cuda_stream
        grid = (s + self.block_m - 1) // self.block_m
        check_cu(cuda.cuLaunchKernel(self.func, grid, h, b, self.threads, 1, 1, self.smem,
                                     ctypes.c_void_p(stream), args, None), f"launch {self.name}")


def load_kernels(folder):
    kernels = []
    for meta_path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        meta = json.load(open(meta_path))
        cubin = meta_path[:-5] + ".cubin"
        if os.path.exists(cubin):
            kernels.append(Kernel(cubin, meta))
    return kernels


def reference(q, k, v, scale):
    """float64 causal attention and log-sum-exp; q [b, s, h, d], k/v [b, s, hkv, d]."""
    b, s, h, d = q.shape
    g = h // k.shape[2]
    qd = q.double().transpose(1, 2)
    kd = k.double().transpose(1, 2).repeat_interleave(g, dim=1)
    vd = v.double().transpose(1, 2).repeat_interleave(g, dim=1)
    scores = torch.matmul(qd, kd.transpose(-1, -2)) * scale
    mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
    scores.masked_fill_(mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.softmax(scores, dim=-1), vd)
    return out.transpose(1, 2), lse


def rel_l2(got, want):
    got = got.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm()).item()


def run_checks(kernels, tolerance, seqs=(1, 63, 64, 65, 1000, 4097)):
    dtypes = {"bf16": torch.bfloat16, "f16": torch.float16}
    rows = []
    worst = 0.0
    for kernel in kernels:
        dtype_name, d = kernel.spec["dtype"], kernel.spec["head_dim"]
        dtype = dtypes[dtype_name]
        for seq in seqs:
            for (h, hkv, batch, layout) in ((32, 8, 1, "bshd"), (8, 8, 2, "bshd"), (8, 2, 2, "bhsd")):
                if seq >= 4097 and d == 256 and h == 32:
                    h, hkv = 16, 4
                shape_q = (batch, seq, h, d)
                shape_kv = (batch, seq, hkv, d)

                def make(shape):
                    if layout == "bhsd":
                        t = torch.randn(shape[0], shape[2], shape[1], shape[3], device="cuda").to(dtype)
                        return t.transpose(1, 2)
                    return torch.randn(shape, device="cuda").to(dtype)

                q, k, v = make(shape_q), make(shape_kv), make(shape_kv)
                o = make(shape_q)
                o.view(torch.int16).fill_(-1)  # poison: all-ones bits are NaN in bf16 and f16
                lse = torch.full((batch, h, seq), float("nan"), device="cuda")
                scale = 1.0 / math.sqrt(d)
                kernel(q, k, v, o, lse, scale)
                torch.cuda.synchronize()
                want, want_lse = reference(q, k, v, scale)
                err = rel_l2(o, want)
                lse_err = (lse.double() - want_lse).abs().max().item() if torch.isfinite(lse).all() else float("inf")
                ok = err <= tolerance and lse_err <= 1e-2
                worst = max(worst, err)
                rows.append(dict(kernel=kernel.name, dtype=dtype_name, head_dim=d, seq=seq, heads=h,
                                 kv_heads=hkv, batch=batch, layout=layout, rel_l2=err, lse_max_abs=lse_err, ok=ok))
                print(f"{'ok  ' if ok else 'FAIL'} {dtype_name} d={d:3} seq={seq:5} h={h}/{hkv} b={batch} "
                      f"{layout}: rel_l2={err:.2e} lse_err={lse_err:.1e}", flush=True)
    return rows, worst


def run_bench(kernels, seqs, heads=32, d=128):
    kernels = [k for k in kernels if k.spec["dtype"] == "bf16" and k.spec["head_dim"] == d]
    rows = []
    for seq in seqs:
        flops = 4 * seq * seq / 2 * d * heads  # causal: half the square, QK^T and PV
        q = torch.randn(1, seq, heads, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, seq, heads, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, seq, heads, d, device="cuda", dtype=torch.bfloat16)
        o = torch.empty_like(q)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        results = {}
        for kernel in kernels:
            results[kernel.name if len(kernels) > 1 else "minf"] = time_ms(lambda: kernel(q, k, v, o))
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            with sdpa_kernel(backend):
                results[name] = time_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
        for name, ms in results.items():
            tflops = flops / (ms * 1e-3) / 1e12
            rows.append(dict(method=name, seq=seq, heads=heads, head_dim=d, ms=ms, tflops=tflops))
            print(f"seq={seq:6} {name:34} {ms:8.3f} ms {tflops:6.1f} TFLOP/s", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kernels", nargs="?", help="folder of <kernel>.cubin + <kernel>.json; omit to time SDPA only")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--seqs", default="16384,65536")
    parser.add_argument("--check-seqs", default="1,63,64,65,1000,4097")
    parser.add_argument("--tolerance", type=float, default=1e-2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    kernels = load_kernels(args.kernels) if args.kernels else []
    print("kernels:", [k.name for k in kernels], flush=True)
    report = {"device": torch.cuda.get_device_name()}
    failed = False
    if args.check:
        seqs = tuple(int(s) for s in args.check_seqs.split(","))
        rows, worst = run_checks(kernels, args.tolerance, seqs)
        report["checks"] = rows
        failed = any(not r["ok"] for r in rows)
        print(f"checks: {sum(r['ok'] for r in rows)} passed, {sum(not r['ok'] for r in rows)} failed, worst rel_l2 {worst:.2e}")
    if args.bench:
        report["bench"] = run_bench(kernels, [int(s) for s in args.seqs.split(",")])
    if args.json:
        json.dump(report, open(args.json, "w"), indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
