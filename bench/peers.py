"""Peers of `minf bench` on the same card, in the same record schema (see src/cli/bench/record.rs):

- sdpa_flash, sdpa_cudnn: PyTorch SDPA pinned to FLASH_ATTENTION / CUDNN_ATTENTION, causal, dense;
- flex_attention: FlexAttention with a BlockMask built from minf's saved 128-block lists
  (`minf bench --save-indices DIR`: `block128_num` / `block128_indices`, causal mask_mod), i.e.
  minf's tiles rounded up to 128x128 blocks;
- minference_vs, minference_bs, minference_ashape: MInference 0.1.6's Triton kernels (kernel time
  only, its estimation excluded) on minf's own vertical-slash index and block-sparse lists, and its
  streaming (A-shape) kernel with the same n_init / n_local;
- minf_python: minf itself through its Python package (`minf.attention` on the same torch tensors,
  in this process): dense, and each saved index (vertical-slash, block-sparse) or A-shape window;
- minference_layer: MInference's own layer (`minference_prefill_forward`: per head, its online
  estimation and its kernels, as its HF patch runs a prefill) on the Q/K/V of --layer-inputs under
  layer --layer of --config; compare with `minf bench --inputs FILE --patterns config:CONFIG:LAYER`
  on the same file (the record's pattern and params match minf's config case). Its density is the
  share of causal 64x64 tiles its own vertical-slash indices compute, counted in one more, untimed run.

Inputs are random normal bf16 (timing only: the tiles are fixed by minf's saved indices, not by the
values). K and V have one head per query head for every peer, since MInference's kernels need that;
minf_python gets the case's K/V heads (--kv-heads, or the index file's), as `minf bench` runs them.
Medians of CUDA-event timed runs after warm-up.

    python3 bench/peers.py --indices idx/ --json peers.json [--seqs 32768,131072] [--methods ...]
        [--heads 32 --kv-heads 8 --head-dim 128 --long-from 524288 --long-heads 4 --dense-long-heads 1]

From --long-from tokens on, cases use --long-heads heads like minf's, and dense SDPA runs on
--dense-long-heads heads (said in each record's note); compare per_head_ms.
MInference 0.1.6 is imported from --site (default /tmp/site), where a pip install from its source
puts it (`pip install --no-deps --no-build-isolation --target /tmp/site minference==0.1.6.0`, or
scripts/gpu-bench.sh; docs/benchmark.md); without it the minference_* methods are skipped with a
message. The safetensors package is needed to read the
indices; without it only the dense methods run. minf_python needs the minf wheel installed
(docs/python.md); without it it is skipped with a message.
"""

import argparse
import datetime
import glob
import json
import os
import sys

import torch

from common import import_minference, time_ms  # same folder

DENSE_METHODS = ("sdpa_flash", "sdpa_cudnn", "minf_python")
LAYER_METHODS = ("minference_layer",)
INDEX_METHODS = ("flex_attention", "minference_vs", "minference_bs", "minference_ashape", "minf_python")
MINFERENCE_MODULES = ("pit_sparse_flash_attention_v2", "block_sparse_flash_attention", "streaming_kernel")


def base_record(method, pattern, params, seq, heads, kv_heads, head_dim, total_ms, reps):
    props = torch.cuda.get_device_properties(0)
    kv_note = f"K/V of {kv_heads} heads" if method == "minf_python" else "K/V expanded to the query heads"
    return {
        "method": method, "pattern": pattern, "params": params, "seq": seq, "heads": heads,
        "kv_heads": kv_heads, "head_dim": head_dim, "dtype": "bf16",
        "est_ms": None, "conv_ms": None, "attn_ms": total_ms, "total_ms": total_ms,
        "per_head_ms": total_ms / heads, "density": None, "tflops": None, "dense_speedup": None,
        "compile_s": None, "peak_mem_bytes": torch.cuda.max_memory_allocated(), "card": props.name,
        "driver": f"CUDA {torch.version.cuda} (torch build)", "version": f"torch {torch.__version__}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "reps": reps,
        "note": f"random normal inputs; {kv_note}; peak_mem_bytes: "
                "torch.cuda.max_memory_allocated since the case began",
    }


def qkv(seq, heads, head_dim):
    return [torch.randn(1, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)]


def kv_grouped(t, kv_heads):
    """The first `kv_heads` heads of a `[1, heads, seq, head_dim]` K or V, contiguous: the grouped K/V
    minf_python runs on, as `minf bench` does."""
    return t[:, :kv_heads].contiguous()


def read_layer_inputs(path):
    """q, k, v of a Q/K/V safetensors file (the format `minf bench --inputs` reads: tensors q, k, v,
    metadata `layout` "bshd" (default) or "bhsd") as bf16 CUDA `[1, heads, seq, head_dim]`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        layout = (f.metadata() or {}).get("layout", "bshd")
        if layout not in ("bshd", "bhsd"):
            raise ValueError(f"{path}: layout {layout!r}; allowed bshd, bhsd")
        tensors = [f.get_tensor(name) for name in ("q", "k", "v")]
    tensors = [t.to(device="cuda", dtype=torch.bfloat16) for t in tensors]
    if layout == "bshd":
        tensors = [t.transpose(1, 2).contiguous() for t in tensors]
    return tensors


def with_config_heads(config, layer, picked, heads):
    """`config` with layer `layer`'s heads replaced by the heads `picked` (comma-separated config
    head indices), in order, so that query head i of the inputs runs config head picked[i]."""
    picked = [int(h) for h in picked.split(",")]
    if len(picked) != heads:
        raise ValueError(f"--config-heads names {len(picked)} heads; the inputs have {heads}")
    entries = config[layer]
    missing = [h for h in picked if str(h) not in entries]
    if missing:
        raise ValueError(f"--config-heads {missing} are not heads of layer {layer} (it has {len(entries)})")
    config = list(config)
    config[layer] = {str(i): entries[str(h)] for i, h in enumerate(picked)}
    return config


def own_index_density(pit, run, seq):
    """The share of the causal 64x64 tiles that MInference's own vertical-slash indices compute in
    one untimed `run` of its layer: every 64-key block an index row lists plus its gathered columns
    in tiles of 64, over every (batch, head) row of indices its converter produced. None when no
    head went through the converter."""
    original = pit.convert_vertical_slash_indexes
    calls = []

    def counting(*args, **kwargs):
        block_count, block_offset, column_count, column_index = original(*args, **kwargs)
        tiles = block_count.to(torch.int64).sum() + ((column_count.to(torch.int64) + 63) // 64).sum()
        calls.append((tiles, block_count.numel()))  # index rows: batch x heads x query blocks
        return block_count, block_offset, column_count, column_index

    pit.convert_vertical_slash_indexes = counting
    try:
        run()
        torch.cuda.synchronize()
    finally:
        pit.convert_vertical_slash_indexes = original
    if not calls:
        return None
    rows = (seq + 63) // 64
    tiles = sum(int(t) for t, _ in calls)
    heads = sum(n for _, n in calls) // rows
    return tiles / (heads * rows * (rows + 1) // 2)


def layer_records(args, path):
    """minference_layer on one Q/K/V file: MInference's `minference_prefill_forward` for layer
    --layer of --config, K/V expanded to the query heads as its attention forward does."""
    forward = import_minference(args.site, ("minference_forward",), package="modules")["minference_forward"]
    with open(args.config) as f:
        config = json.load(f)
    if not 0 <= args.layer < len(config):
        raise ValueError(f"--layer {args.layer} is outside the config's {len(config)} layers")
    q, k, v = read_layer_inputs(path)
    heads, kv_heads, seq, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    if heads % kv_heads:
        raise ValueError(f"{path}: {heads} query heads is not a multiple of {kv_heads} key/value heads")
    if args.config_heads:
        config = with_config_heads(config, args.layer, args.config_heads, heads)
    k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    reps = args.long_reps if seq >= args.long_from else args.reps
    kwargs = {
        "attn_forward_config": {"best_pattern": config, "starting_layer": 0},
        "layer_idx": args.layer,
        "num_hidden_layers": len(config),
    }
    torch.cuda.reset_peak_memory_stats()
    ms = time_ms(lambda: forward.minference_prefill_forward(q, k, v, kwargs), reps, warmup=2)
    params = f"{os.path.basename(args.config)}:{args.layer}"
    record = base_record("minference_layer", "config", params, seq, heads, kv_heads, d, ms, reps)
    try:
        pit = import_minference(args.site, ("pit_sparse_flash_attention_v2",))["pit_sparse_flash_attention_v2"]
        record["density"] = own_index_density(pit, lambda: forward.minference_prefill_forward(q, k, v, kwargs), seq)
    except Exception as error:  # the density is a note on the timing, never a reason to lose it
        print(f"minference_layer: its own index density not measured: {error}", flush=True)
    record["note"] = (f"MInference 0.1.6 minference_prefill_forward (its per-head estimation and kernels) on "
                      f"{os.path.basename(path)}; K/V expanded to the query heads; density: its own "
                      f"vertical-slash indices, in an untimed run")
    record["inputs"] = f"file {os.path.basename(path)}"
    if args.config_heads:
        record["note"] += f"; config heads [{args.config_heads.replace(',', ', ')}]"
    density = "" if record["density"] is None else f", density {100 * record['density']:.2f}%"
    print(f"minference_layer  config:{params} {seq:8d} x {heads:2d} heads: {ms:9.3f} ms "
          f"({ms / heads:.3f} per head{density})", flush=True)
    del q, k, v
    return [record]


def import_minf():
    """The minf package, or None (said once) when it is not installed."""
    try:
        import minf
    except ImportError as error:
        print(f"minf's Python package is not importable ({error}): install its wheel (docs/python.md); "
              "minf_python skipped", flush=True)
        return None
    return minf


def dense_records(args, seq, heads, kv_heads, methods, reps, note, minf=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}
    q, k, v = qkv(seq, heads, args.head_dim)
    flops = 4.0 * seq * seq / 2 * args.head_dim * heads
    records = []
    for method in methods:
        if method == "minf_python" and minf is None:
            continue
        torch.cuda.reset_peak_memory_stats()
        try:
            if method == "minf_python":
                kg, vg = kv_grouped(k, kv_heads), kv_grouped(v, kv_heads)
                ms = time_ms(lambda: minf.attention(q, kg, vg, layout="bhsd"), reps)
                del kg, vg
            else:
                with sdpa_kernel([backends[method]]):
                    ms = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                                 reps)
        except RuntimeError as error:
            print(f"{method} at {seq}: failed: {error}", flush=True)
            continue
        record = base_record(method, "dense", "", seq, heads, kv_heads, args.head_dim, ms, reps)
        record["density"] = 1.0
        record["tflops"] = flops / (ms * 1e-3) / 1e12  # causal half of the score matrix
        if note:
            record["note"] += "; " + note
        records.append(record)
        print(f"{method:17s} dense {seq:8d} x {heads:2d} heads: {ms:9.3f} ms ({ms / heads:.3f} per head)", flush=True)
    del q, k, v
    return records


def index_records(args, path, methods, ops, reps, minf=None):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    seq, heads, kv_heads, d = (int(meta[k]) for k in ("seq", "heads", "kv_heads", "head_dim"))
    pattern, params = meta["pattern"], meta["params"]
    q, k, v = qkv(seq, heads, d)
    scale = d ** -0.5
    seqlens = torch.tensor([seq], dtype=torch.int32, device="cuda")
    rows64 = (seq + 63) // 64
    records = []

    def add(method, ms, tiles, tile, causal_tiles, extra=""):
        record = base_record(method, pattern, params, seq, heads, kv_heads, d, ms, reps)
        record["density"] = tiles / causal_tiles
        record["tflops"] = tiles * 4.0 * tile * tile * d / (ms * 1e-3) / 1e12
        record["note"] += f"; same tiles as minf ({os.path.basename(path)}){extra}"
        records.append(record)
        print(f"{method:17s} {pattern}:{params} {seq:8d} x {heads:2d} heads: {ms:9.3f} ms, density "
              f"{record['density']:.4f}, {record['tflops']:.1f} TFLOP/s on computed tiles", flush=True)

    if "flex_attention" in methods:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        counts = tensors["block128_num"].cuda()
        indices = tensors["block128_indices"].cuda()
        # from_kv_blocks sizes its dense mask by the index width: pad the lists to every KV block
        # (a narrower width makes its scatter index out of bounds, a device assert that ends the run).
        kv_blocks = (seq + 127) // 128
        if indices.shape[-1] < kv_blocks:
            indices = torch.nn.functional.pad(indices, (0, kv_blocks - indices.shape[-1]))
        causal = lambda b, h, qi, ki: qi >= ki
        mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=128, mask_mod=causal, seq_lengths=(seq, seq))
        flex = torch.compile(flex_attention)
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(lambda: flex(q, k, v, block_mask=mask, scale=scale), reps)
        rows128 = (seq + 127) // 128
        add("flex_attention", ms, counts.sum().item(), 128, heads * rows128 * (rows128 + 1) // 2,
            "; 128x128 blocks (minf's 64x64 tiles rounded up), causal mask_mod")
    if "minference_vs" in methods and ops and pattern == "vertical_slash":
        bc, bo, cc, ci = (tensors[n].cuda() for n in ("block_count", "block_offset", "column_count", "column_index"))
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(lambda: ops["vs"]._triton_mixed_sparse_attention(
            q, k, v, seqlens, bc, bo, cc, ci, scale, 64, 64), reps)
        tiles = bc.sum().item() + ((cc + 63) // 64).sum().item()
        add("minference_vs", ms, tiles, 64, heads * rows64 * (rows64 + 1) // 2, "; kernel only (estimation excluded)")
    if "minference_bs" in methods and ops and pattern == "block_sparse":
        index = tensors["kv_indices"].cuda()
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(lambda: ops["bs"]._triton_block_sparse_attention(q, k, v, seqlens, index, scale, 64, 64), reps)
        add("minference_bs", ms, index.shape[-1] * heads * rows64, 64, heads * rows64 * (rows64 + 1) // 2,
            "; kernel only; every list slot is computed (padded slots repeat block 0, as MInference's own top-k "
            "lists are always full)")
    if "minference_ashape" in methods and ops and pattern == "a_shape":
        n_init, n_local = (int(x) for x in params.split(","))
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(lambda: ops["ashape"].streaming_forward(q, k, v, n_init, n_local), reps)
        tiles = tensors["block128_num"].sum().item() * 4  # 64x64 tiles within minf's 128 blocks (upper bound)
        add("minference_ashape", ms, tiles, 64, heads * rows64 * (rows64 + 1) // 2,
            "; streaming kernel; density an upper bound from minf's 128-blocks")
    if "minf_python" in methods and minf is not None:
        causal_tiles = heads * rows64 * (rows64 + 1) // 2
        k, v = kv_grouped(k, kv_heads), kv_grouped(v, kv_heads)
        if pattern == "vertical_slash":
            index = {n: tensors[n].cuda() for n in ("block_count", "block_offset", "column_count", "column_index")}
            torch.cuda.reset_peak_memory_stats()
            ms = time_ms(lambda: minf.attention(q, k, v, "vertical_slash", layout="bhsd", **index), reps)
            tiles = index["block_count"].sum().item() + ((index["column_count"] + 63) // 64).sum().item()
            add("minf_python", ms, tiles, 64, causal_tiles, "; minf.attention on the saved index (no estimation)")
        elif pattern == "block_sparse":
            index = {n: tensors[n].cuda() for n in ("kv_num_blocks", "kv_indices")}
            torch.cuda.reset_peak_memory_stats()
            ms = time_ms(lambda: minf.attention(q, k, v, "block_sparse", layout="bhsd", **index), reps)
            add("minf_python", ms, index["kv_num_blocks"].sum().item(), 64, causal_tiles,
                "; minf.attention on the saved lists (no estimation)")
        elif pattern == "a_shape":
            n_init, n_local = (int(x) for x in params.split(","))
            torch.cuda.reset_peak_memory_stats()
            ms = time_ms(lambda: minf.attention(q, k, v, "a_shape", layout="bhsd", n_init=n_init, n_local=n_local),
                         reps)
            add("minf_python", ms, tensors["block128_num"].sum().item() * 4, 64, causal_tiles,
                "; minf.attention; density an upper bound from minf's 128-blocks")
    del q, k, v
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--indices", help="folder of minf bench --save-indices files")
    parser.add_argument("--json", required=True)
    parser.add_argument("--seqs", default="32768,131072,262144,524288,1048576")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--long-from", type=int, default=524288)
    parser.add_argument("--long-heads", type=int, default=4)
    parser.add_argument("--dense-long-heads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(dict.fromkeys(DENSE_METHODS + INDEX_METHODS + LAYER_METHODS)))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--long-reps", type=int, default=5)
    parser.add_argument("--site", default="/tmp/site", help="where MInference 0.1.6 is installed (pip install --target)")
    parser.add_argument("--append", action="store_true", help="keep the records already in --json")
    parser.add_argument("--layer-inputs", help="Q/K/V safetensors files, comma-separated, for minference_layer")
    parser.add_argument("--config", help="MInference JSON config, for minference_layer")
    parser.add_argument("--layer", type=int, default=16, help="config layer, for minference_layer")
    parser.add_argument("--config-heads", help="config heads the inputs' query heads run, in order, for "
                        "minference_layer (default: heads 0, 1, ...); minf bench times heads 0,8,16,24 at 1M")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    allowed = list(dict.fromkeys(DENSE_METHODS + INDEX_METHODS + LAYER_METHODS))
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}: allowed {', '.join(allowed)}")
    seqs = [int(s) for s in args.seqs.split(",")]
    records = []
    if args.append and os.path.exists(args.json):
        records = json.load(open(args.json))

    def save():
        with open(args.json + ".partial", "w") as f:
            json.dump(records, f, indent=1)
        os.replace(args.json + ".partial", args.json)

    minf = import_minf() if "minf_python" in methods else None
    dense = [m for m in methods if m in DENSE_METHODS]
    for seq in seqs:
        long = seq >= args.long_from
        heads = args.dense_long_heads if long else args.heads
        kv_heads = max(1, heads * args.kv_heads // args.heads)
        note = f"timed on {heads} of {args.heads} heads; compare per_head_ms" if long else ""
        records += dense_records(args, seq, heads, kv_heads, dense, args.long_reps if long else args.reps, note, minf)
        save()

    wanted = [m for m in methods if m in INDEX_METHODS]
    if wanted and args.indices:
        try:
            import safetensors  # noqa: F401
        except ImportError:
            print("the safetensors package is missing (pip install safetensors): the index-based peers "
                  f"({', '.join(wanted)}) cannot read minf's indices and are skipped", flush=True)
            wanted = []
        ops = None
        if any(m.startswith("minference") for m in wanted):
            try:
                ops = import_minference(args.site, MINFERENCE_MODULES)
                ops = {"vs": ops["pit_sparse_flash_attention_v2"], "bs": ops["block_sparse_flash_attention"],
                       "ashape": ops["streaming_kernel"]}
            except Exception as error:  # not installed or not importable here
                print(f"MInference not importable from {args.site} ({error}): install it there "
                      "(docs/benchmark.md); minference_* skipped", flush=True)
        for path in sorted(glob.glob(os.path.join(args.indices, "*.safetensors"))):
            seq = int(os.path.basename(path).rsplit("_", 1)[-1].split(".")[0])
            if seq not in seqs:
                continue
            reps = args.long_reps if seq >= args.long_from else args.reps
            try:
                records += index_records(args, path, wanted, ops, reps, minf)
            except (RuntimeError, ValueError) as error:
                print(f"{os.path.basename(path)}: failed: {error}", flush=True)
            torch.cuda.empty_cache()
            save()
    if "minference_layer" in methods and args.layer_inputs and args.config:
        for path in args.layer_inputs.split(","):
            try:
                records += layer_records(args, path)
            except Exception as error:  # MInference's module not importable here, or the run failed
                print(f"minference_layer on {os.path.basename(path)}: skipped: {error}", flush=True)
            torch.cuda.empty_cache()
            save()
    elif "minference_layer" in methods and (args.layer_inputs or args.config):
        print("minference_layer needs both --layer-inputs and --config; skipped", flush=True)
    save()
    print(f"wrote {len(records)} records to {args.json}")


if __name__ == "__main__":
    main()
