"""MInference's vertical-slash estimate written in PyTorch with every head batched: the baseline
`estimate_bench` is compared with (docs/benchmark.md). Same semantics as minf's CPU reference of the
estimate (minf-testkit's `estimate`):

- the last last_q = min(64, N) queries score all N keys (bf16 matmul, scale 1/sqrt(d)), causal mask
  on the final last_q x last_q square, softmax per row in f32;
- vertical[j] = column sums; slash[s] = mass on keys i - s, summed with a strided view (each row
  shifted by its index into a zero buffer, then one column sum);
- columns 0..30 and diagonals 0..100 forced (+inf), v = min(N, max(v, 30)), s = min(N, max(s, 50)),
  torch.topk, verticals sorted ascending, slashes descending.

GQA without copying K: the query heads of a KV group form one [group * last_q, d] matrix.

    python3 bench/estimate_torch.py [--seq 131072 --heads 32 --kv-heads 8 --head-dim 128 \
        --vertical 1000 --slash 6096 --reps 20] [--inputs QKV.safetensors] \
        [--save-selection OUT.safetensors] [--compare SELECTION.safetensors]

--inputs reads q and k as minf's save_safetensors writes them (f32 [1, seq, heads, dim], metadata
layout = "bshd"; "bhsd" is transposed); without it, q and k are random normal bf16 (the time does not
depend on the values). --save-selection writes int32 tensors `vertical` [heads, v] and `slash`
[heads, s]; --compare reads such a file and prints, per head, how many columns and diagonals differ.
Prints the median time in ms of the whole estimate (CUDA events, after warm-up).
"""

import argparse
import json

import torch

from common import time_ms  # same folder

FORCED_COLUMNS = 30
FORCED_DIAGONALS = 100


def load_qk(path):
    from safetensors import safe_open  # only for --inputs (the GPU machine may lack safetensors)
    from safetensors.torch import load_file

    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        layout = (f.metadata() or {}).get("layout", "bshd")
    q, k = tensors["q"], tensors["k"]
    if layout == "bhsd":
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    return q.cuda().to(torch.bfloat16).contiguous(), k.cuda().to(torch.bfloat16).contiguous()


def estimate(q, k, vertical_size, slash_size):
    """q [1, N, H, d], k [1, N, KVH, d] bf16 -> (vertical [H, v] ascending, slash [H, s] descending)."""
    _, n, heads, d = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    last_q = min(64, n)
    # [KVH, group * last_q, d] @ [KVH, d, N]: no copy of K per query head.
    q_last = q[0, n - last_q :].permute(1, 0, 2).reshape(kv_heads, group * last_q, d)
    keys = k[0].permute(1, 2, 0)  # [KVH, d, N]
    scores = torch.bmm(q_last, keys).view(heads, last_q, n).float() * (d**-0.5)
    causal = torch.ones(last_q, last_q, dtype=torch.bool, device=q.device).triu(1)
    scores[:, :, n - last_q :].masked_fill_(causal, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    vertical = p.sum(dim=1)
    # Row r of p shifted right by last_q - 1 - r: column c' then holds diagonal offset N - 1 - c'.
    width = n + last_q - 1
    shifted = torch.zeros(heads, last_q, width, device=q.device, dtype=p.dtype)
    shifted.as_strided((heads, last_q, n), (last_q * width, width - 1, 1), last_q - 1).copy_(p)
    slash = shifted.sum(dim=1)[:, :n].flip(-1)
    vertical[:, :FORCED_COLUMNS] = float("inf")
    slash[:, :FORCED_DIAGONALS] = float("inf")
    v = min(n, max(vertical_size, 30))
    s = min(n, max(slash_size, 50))
    v_idx = torch.topk(vertical, v, dim=-1).indices.sort(dim=-1).values
    s_idx = torch.topk(slash, s, dim=-1).indices.sort(dim=-1, descending=True).values
    return v_idx, s_idx


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=131072)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--vertical", type=int, default=1000)
    parser.add_argument("--slash", type=int, default=6096)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", help="q/k from a safetensors file (minf's save_safetensors format)")
    parser.add_argument("--save-selection", help="write the selections (int32 vertical [H, v], slash [H, s])")
    parser.add_argument("--compare", help="compare with selections saved in this format")
    parser.add_argument("--json", help="also write the result as JSON here")
    args = parser.parse_args()

    if args.inputs:
        q, k = load_qk(args.inputs)
    else:
        torch.manual_seed(args.seed)
        q = torch.randn(1, args.seq, args.heads, args.head_dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, args.seq, args.kv_heads, args.head_dim, device="cuda", dtype=torch.bfloat16)
    _, n, heads, d = q.shape
    ms = time_ms(lambda: estimate(q, k, args.vertical, args.slash), args.reps)
    print(
        f"torch vertical-slash estimate ({args.vertical}, {args.slash}) {n} tokens x {heads} heads "
        f"(kv {k.shape[2]}), d={d}, bf16 on {torch.cuda.get_device_name()}: {ms:.3f} ms (median of {args.reps})"
    )
    v_idx, s_idx = estimate(q, k, args.vertical, args.slash)
    if args.save_selection:
        from safetensors.torch import save_file

        save_file({"vertical": v_idx.int().cpu().contiguous(), "slash": s_idx.int().cpu().contiguous()}, args.save_selection)
    if args.compare:
        from safetensors.torch import load_file

        other = load_file(args.compare)
        for h in range(heads):
            dv = len(set(v_idx[h].tolist()) ^ set(other["vertical"][h].tolist()))
            ds = len(set(s_idx[h].tolist()) ^ set(other["slash"][h].tolist()))
            print(f"head {h}: columns differing {dv}, diagonals differing {ds}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seq": n, "heads": heads, "kv_heads": k.shape[2], "head_dim": d, "ms": ms,
                       "device": torch.cuda.get_device_name()}, f, indent=1)


if __name__ == "__main__":
    main()
