#!/usr/bin/env python3
"""Usage: scripts/ncu-top-stalls.py FILE.csv [TOP]

Prints the TOP (default 40) SASS instructions of an `ncu --page source --csv --print-source sass`
export with the most warp-stall samples, and the stall reasons summed over the kernel
(scripts/gpu-profile.sh writes the export and calls this). In a warp-specialised kernel (its
SASS resizes registers with USETMAXREG) it then splits the samples by role: the producer's code
runs from USETMAXREG.DEALLOC to the next EXIT, the consumers' from USETMAXREG.TRY_ALLOC to the
next DEALLOC or EXIT; for each role its share of the samples, its stall reasons and its TOP / 4
instructions with the most samples."""
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

# Roles of a warp-specialised kernel, from the register resizing that starts each role's code.
def code(r):
    return " ".join(r[i] for i in source)
role, roles = "common", []
for r in body:
    text = code(r)
    if "USETMAXREG" in text and "DEALLOC" in text:
        role = "producer"
    elif "USETMAXREG" in text:
        role = "consumers"
    roles.append(role)
    if "EXIT" in text.split() and role != "common":
        role = "common"
if "producer" in roles:
    # Reasons of the issued and not-issued samples together (the plain stall_ columns).
    role_reasons = [i for i in reasons if header[i].startswith("stall_") and "Not Issued" not in header[i]] or reasons
    by_role = {}
    for r, name in zip(body, roles):
        by_role.setdefault(name, []).append(r)
    for name in ("consumers", "producer", "common"):
        part = by_role.get(name, [])
        n = sum(num(r[s]) for r in part)
        if not part or n == 0:
            continue
        print(f"== {name}: {n / total:.1%} of the samples")
        part_sums = sorted(((sum(num(r[i]) for r in part), header[i]) for i in role_reasons), reverse=True)
        print("   " + ", ".join(f"{h} {v / n:.1%}" for v, h in part_sums[:8] if v))
        for r in sorted(part, key=lambda r: -num(r[s]))[: max(top // 4, 1)]:
            print(f"  {num(r[s]) / n:6.1%}  " + code(r)[:150])
