#!/usr/bin/env python3
"""Usage: scripts/nvrtc-check.py ARCH FILE.cu [NVRTC_OPTION ...]

Compiles a rendered kernel source with NVRTC on the CPU (no GPU needed) and prints the ptxas
resource report: registers, spills, stack, shared memory, and the C7514/C7518 warnings that say
ptxasserialised a kernel's wgmma instructions. With PTX_OUT=FILE it also writes the PTX, with
CUBIN_OUT=FILE the CUBIN (disassemble it with nvdisasm, e.g. to see each warp role's registers
after setmaxnreg: scripts/sass-registers.py). ARCH is
e.g. sm_90a. Render sources with `cargo run -p minf-codegen --example render` (docs/testing.md).
Needs the pip wheel nvidia-cuda-nvrtc (as .ci/run installs)."""
import ctypes, glob, os, sys
import nvidia

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
print("nvrtc-check:", "ok" if rc == 0 else f"FAILED ({rc})")
sys.exit(0 if rc == 0 else 1)
