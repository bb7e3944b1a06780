#!/usr/bin/env python3
"""Usage: scripts/ncu-top-stalls.py FILE.csv [TOP]

Prints the TOP (default 40) SASS instructions of an `ncu --page source --csv --print-source sass`
export with the most warp-stall samples, and the stall reasons summed over the kernel
(scripts/gpu-profile.sh writes the export and calls this). In a warp-specialised kernel (its
SASS resizes registers with USETMAXREG) it then splits the samples by role: the producer's code
runs from USETMAXREG.DEALLOC to the next EXIT, the consumers' from USETMAXREG.TRY_ALLOC to the
next DEALLOC or EXIT; for each role its share of the samples, its stall reasons, the shares it
spends in mbarrier try-waits and in wgmma waits, the warp-instructions it executed and their
number per pass of its loop (per execution of its most executed try-wait: a tile per warp for the
producer of the attention kernels), and its TOP / 4 instructions with the most samples."""
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
# Where a warp waits: an mbarrier wait is a try-wait (SYNCS.PHASECHK) and the branch that retries it,
# a wgmma wait a WARPGROUP.DEPBAR.
mbarrier_wait = [False] * len(body)
for k, r in enumerate(body):
    text = code(r)
    mbarrier_wait[k] = "PHASECHK" in text or (k > 0 and "PHASECHK" in code(body[k - 1]) and "BRA" in text)
executed = next((i for i, h in enumerate(header) if h == "Instructions Executed"), None)
if "producer" in roles:
    # Reasons of the issued and not-issued samples together (the plain stall_ columns).
    role_reasons = [i for i in reasons if header[i].startswith("stall_") and "Not Issued" not in header[i]] or reasons
    by_role = {}
    for k, (r, name) in enumerate(zip(body, roles)):
        by_role.setdefault(name, []).append((k, r))
    for name in ("consumers", "producer", "common"):
        part = [r for _, r in by_role.get(name, [])]
        n = sum(num(r[s]) for r in part)
        if not part or n == 0:
            continue
        print(f"== {name}: {n / total:.1%} of the samples")
        part_sums = sorted(((sum(num(r[i]) for r in part), header[i]) for i in role_reasons), reverse=True)
        print("   " + ", ".join(f"{h} {v / n:.1%}" for v, h in part_sums[:8] if v))
        at_mbarrier = sum(num(r[s]) for k, r in by_role[name] if mbarrier_wait[k])
        at_wgmma = sum(num(r[s]) for r in part if "WARPGROUP.DEPBAR" in code(r))
        line = f"   waiting on an mbarrier {at_mbarrier / n:.1%}, on wgmma results {at_wgmma / n:.1%}"
        if executed is not None:
            # Per pass of the role's loop: its most executed mbarrier try-wait runs once a tile per warp.
            passes = max((num(r[executed]) for k, r in by_role[name] if "PHASECHK" in code(r)), default=0)
            done = sum(num(r[executed]) for r in part)
            line += f"; {done:.3g} warp-instructions executed"
            if passes and name != "common":
                line += f", {done / passes:.0f} per pass of its most executed try-wait ({passes:.3g} passes)"
        print(line)
        for r in sorted(part, key=lambda r: -num(r[s]))[: max(top // 4, 1)]:
            print(f"  {num(r[s]) / n:6.1%}  " + code(r)[:150])
