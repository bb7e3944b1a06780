#!/usr/bin/env python3
"""Usage: scripts/nvrtc-check.py ARCH FILE.cu [NVRTC_OPTION ...]  |  scripts/nvrtc-check.py --registers FILE.sass

Compiles a rendered kernel source with NVRTC on the CPU (no GPU needed) and prints the ptxas
resource report: registers, spills, stack, shared memory, and the warnings that say ptxas
serialised a kernel's wgmma instructions (C7514, C7515, C7518: "Potential Performance Loss"),
which fail the check as they fail CI. With PTX_OUT=FILE it also writes the PTX, with
CUBIN_OUT=FILE the CUBIN. ARCH is e.g. sm_90a. Render sources with
`cargo run -p minf-codegen --example render` (docs/testing.md).
Needs the pip wheel nvidia-cuda-nvrtc (as .ci/run installs).

With --registers, reads `nvdisasm -c` output of a warp-specialised kernel instead (no NVRTC) and
prints, for the code after each `setmaxnreg` (SASS `USETMAXREG`), the budget it sets, the highest
register that code names up to the next one (or the end), and its local-memory (spill) loads and
stores: the producer's branch follows the DEALLOC, the consumers' the TRY_ALLOC. Make the SASS with
`CUBIN_OUT=k.cubin scripts/nvrtc-check.py sm_90a k.cu` and `nvdisasm -c k.cubin > k.sass`."""
import ctypes, glob, os, re, sys


def register_report(sass_path):
    regions, current = [], {"name": "entry", "max": -1, "ldl": 0, "stl": 0}
    for line in open(sass_path).read().splitlines():
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


if len(sys.argv) == 3 and sys.argv[1] == "--registers":
    register_report(sys.argv[2])
    sys.exit(0)

import nvidia  # noqa: E402  (only the NVRTC mode needs the wheel)

lib = None
for root in nvidia.__path__:
    for path in glob.glob(os.path.join(root, "cu*", "lib", "libnvrtc.so*")) + glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*")):
        if "builtins" not in path:
            lib = path
if lib is None:
    sys.exit("nvrtc-check: libnvrtc not found in the nvidia wheels")
for builtins in glob.glob(os.path.join(os.path.dirname(lib), "libnvrtc-builtins.so*")):
    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
nvrtc = ctypes.CDLL(lib)
if len(sys.argv) < 3:
    sys.exit(__doc__.splitlines()[0])
arch, path, *extra = sys.argv[1:]
src = open(path, "rb").read()
prog = ctypes.c_void_p()
assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, path.encode(), 0, None, None) == 0
opts = [f"--gpu-architecture={arch}", "--std=c++17", "--use_fast_math", "--ptxas-options=-v", *extra]
arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(prog, log)
print(log.value.decode(errors="replace"))
if rc == 0 and os.environ.get("PTX_OUT"):
    ptx_size = ctypes.c_size_t()
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(ptx_size))
    ptx = ctypes.create_string_buffer(ptx_size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    open(os.environ["PTX_OUT"], "wb").write(ptx.value)
if rc == 0 and os.environ.get("CUBIN_OUT"):
    cubin_size = ctypes.c_size_t()
    assert nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(cubin_size)) == 0
    cubin = ctypes.create_string_buffer(cubin_size.value)
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    open(os.environ["CUBIN_OUT"], "wb").write(cubin.raw)
# A serialised wgmma leaves the kernel correct and much slower: the CI test
# (minf-runtime/tests/hopper_engines_compile.rs) fails on these lines, and so does this check.
losses = [line for line in log.value.decode(errors="replace").splitlines() if "Potential Performance Loss" in line]
if rc != 0:
    print(f"nvrtc-check: FAILED ({rc})")
elif losses:
    print(f"nvrtc-check: FAILED (ptxas reports {len(losses)} performance loss(es))")
else:
    print("nvrtc-check: ok")
sys.exit(0 if rc == 0 and not losses else 1)
