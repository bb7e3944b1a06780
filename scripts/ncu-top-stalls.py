#!/usr/bin/env python3
"""Usage: scripts/ncu-top-stalls.py FILE.csv [TOP]

Prints the TOP (default 40) SASS instructions of an `ncu --page source --csv --print-source sass`
export with the most warp-stall samples, and the stall reasons summed over the kernel
(scripts/gpu-profile.sh writes the export and calls this)."""
import csv
import sys

if len(sys.argv) < 2:
    sys.exit(__doc__.splitlines()[0])
rows = list(csv.reader(open(sys.argv[1], newline="")))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
header_at = next(i for i, r in enumerate(rows) if any("Sampl" in c for c in r))
header = rows[header_at]
body = [r for r in rows[header_at + 1:] if len(r) == len(header)]
def col(pred):
    return [i for i, h in enumerate(header) if pred(h)]
samples = col(lambda h: h.startswith("Warp Stall Sampling (All"))
source = col(lambda h: h in ("Source", "Address"))
print("columns:", [h for h in header if "stall" in h.lower() or "Sampl" in h][:40])
def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0
s = samples[0]
total = sum(num(r[s]) for r in body) or 1.0
print(f"total samples {total:.0f}")
reasons = [i for i, h in enumerate(header) if h.startswith("stall_") or h.endswith("(stall)") or "Stall" in h and i != s]
sums = sorted(((sum(num(r[i]) for r in body), header[i]) for i in reasons), reverse=True)
for v, h in sums[:14]:
    print(f"  {h}: {v / total:.1%}")
for r in sorted(body, key=lambda r: -num(r[s]))[:top]:
    print(f"{num(r[s]) / total:6.1%}  " + "  ".join(r[i] for i in source)[:150])
