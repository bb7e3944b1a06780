#!/usr/bin/env python3
"""Usage: scripts/sass-registers.py FILE.sass

Reads `nvdisasm -c` output of a warp-specialised kernel and prints, for the code after each
`setmaxnreg` (SASS `USETMAXREG`), the budget it sets, the highest register the code up to the next
one (or the end) names, and its local-memory (spill) loads and stores. The producer's branch is the
one after the DEALLOC, the consumers' the one after TRY_ALLOC. Make the CUBIN with
`CUBIN_OUT=k.cubin scripts/nvrtc-check.py sm_90a k.cu`, then `nvdisasm -c k.cubin > k.sass`."""
import re, sys

if len(sys.argv) != 2:
    sys.exit(__doc__.splitlines()[0])
lines = open(sys.argv[1]).read().splitlines()
regions, current = [], {"name": "entry", "max": -1, "ldl": 0, "stl": 0}
for line in lines:
    m = re.search(r"USETMAXREG\.(\S+)\s+(?:UP\d+,\s*)?(0x[0-9a-f]+)", line)
    if m:
        regions.append(current)
        current = {"name": f"{m.group(1)} {int(m.group(2), 16)}", "max": -1, "ldl": 0, "stl": 0}
        continue
    code = line.split(";")[0]
    for r in re.findall(r"\bR(\d+)\b", code):
        current["max"] = max(current["max"], int(r))
    current["ldl"] += bool(re.search(r"\bLDL\b", code))
    current["stl"] += bool(re.search(r"\bSTL\b", code))
regions.append(current)
for r in regions:
    print(f"{r['name']:<28} highest register R{r['max']:<4} LDL {r['ldl']:<4} STL {r['stl']}")
