"""MInference 0.1.6's vertical-slash kernel on a fixed index, timed on one GPU, and the converted
index saved so that minf's kernel runs on exactly the same tiles on the same card
(`vs_bench DIR/vs_index.safetensors`; docs/benchmark.md).

On the GPU machine, with MInference installed under /tmp/site (docs/benchmark.md):

    python3 bench/minference_vs.py --out DIR [--seq 131072 --heads 32 --head-dim 128 \
        --sinks 30 --verticals 970 --slashes 6096 --seed 0]

Writes DIR/vs_index.safetensors (block_count, block_offset, column_count, column_index, int32,
[1, heads, rows(, nnz)]; raw vertical/slash too) and DIR/minference_vs.json (timings, density).
The index: per head, `sinks` first columns plus `verticals` random distinct columns, and the
`slashes` nearest diagonals (offsets 0..slashes-1), i.e. a local window.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file

from common import import_minference, time_ms  # same folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seq", type=int, default=131072)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--sinks", type=int, default=30)
    parser.add_argument("--verticals", type=int, default=970)
    parser.add_argument("--slashes", type=int, default=6096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ops = import_minference()["pit_sparse_flash_attention_v2"]
    assert ops.sparse_attn_func is None and ops.convert_vertical_slash_indexes_opt is None, "not the Triton path"

    n, h, d = args.seq, args.heads, args.head_dim
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    vertical = torch.empty(1, h, args.sinks + args.verticals, dtype=torch.int32)
    for head in range(h):
        extra = torch.randperm(n - args.sinks, generator=gen)[: args.verticals] + args.sinks
        vertical[0, head] = torch.cat([torch.arange(args.sinks), extra]).sort()[0].to(torch.int32)
    slash = torch.arange(args.slashes, dtype=torch.int32).flip(0).expand(1, h, -1).contiguous()  # descending
    vertical, slash = vertical.cuda(), slash.cuda()
    seqlens = torch.tensor([n], dtype=torch.int32, device="cuda")

    convert = lambda: ops.convert_vertical_slash_indexes(seqlens, vertical, slash, n, 64, 64)
    convert_ms = time_ms(convert, iters=10, warmup=3)
    block_count, block_offset, column_count, column_index = convert()

    q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = d ** -0.5

    def kernel():
        return ops._triton_mixed_sparse_attention(
            q, k, v, seqlens, block_count, block_offset, column_count, column_index, scale, 64, 64
        )

    kernel_ms = time_ms(kernel, iters=10, warmup=3)
    rows = block_count.shape[-1]
    tiles = block_count.sum().item() + ((column_count + 63) // 64).sum().item()
    causal_tiles = h * rows * (rows + 1) // 2
    flops = tiles * 64 * 64 * d * 4
    record = {
        "device": torch.cuda.get_device_name(),
        "method": "minference_triton_vertical_slash",
        "seq": n, "heads": h, "head_dim": d, "sinks": args.sinks, "verticals": args.verticals,
        "slashes": args.slashes, "seed": args.seed,
        "kernel_ms": kernel_ms, "convert_ms": convert_ms,
        "tiles_64x64": tiles, "causal_tiles_64x64": causal_tiles, "density": tiles / causal_tiles,
        "tflops_on_computed_tiles": flops / (kernel_ms * 1e-3) / 1e12,
        "nnz_s": block_offset.shape[-1], "nnz_v": column_index.shape[-1], "rows": rows,
    }
    save_file(
        {
            "block_count": block_count.contiguous().cpu(),
            "block_offset": block_offset.contiguous().cpu(),
            "column_count": column_count.contiguous().cpu(),
            "column_index": column_index.contiguous().cpu(),
            "vertical": vertical.cpu(),
            "slash": slash.cpu(),
        },
        os.path.join(args.out, "vs_index.safetensors"),
    )
    json.dump(record, open(os.path.join(args.out, "minference_vs.json"), "w"), indent=1)
    print(
        f"MInference Triton vertical-slash: {kernel_ms:.3f} ms, converter {convert_ms:.3f} ms, "
        f"density {record['density'] * 100:.2f}% of 64x64 tiles, "
        f"{record['tflops_on_computed_tiles']:.1f} TFLOP/s on computed tiles ({record['device']})",
        flush=True,
    )


if __name__ == "__main__":
    main()
