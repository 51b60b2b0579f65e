"""Compiled CPU selective scan: C++ (OpenMP threads + SIMD) forward and backward, built on first use.

    from hear_ssam.ops.selective_scan_cpu import load_compiled
    scan = load_compiled()      # builds once (~30 s), later loads from the cache; or BackendUnavailable
    y = scan(u, delta, A, B, C, D, z=z, delta_bias=b, delta_softplus=True)

Same arguments and semantics as mamba_ssm's `selective_scan_fn` (time-varying B and C only),
fp32 maths, gradients for every input that requires one. The kernels are in
csrc/selective_scan_cpu.cpp, compiled by `torch.utils.cpp_extension.load` into a cache keyed by
torch version, Python version and instruction set:

    $HEAR_SSAM_CACHE/torch_extensions/torch<version>-py<XY>/hear_ssam_scan_cpu_<isa>/
    (HEAR_SSAM_CACHE defaults to $XDG_CACHE_HOME/hear_ssam, else ~/.cache/hear_ssam)

The instruction set is the one ATen itself dispatches to on this CPU (avx512, avx2, or a
portable `generic` build for anything else), so a cache shared between machines never hands
an AVX-512 binary to a CPU without it. HEAR_SSAM_CPU_ISA=avx512|avx2|generic forces one, e.g.
to test the fallbacks; HEAR_SSAM_BUILD_VERBOSE=1 shows the compiler's output.

A failure (no compiler, compile error, a cached library that does not load even after one
rebuild) is remembered for the life of the process: `load_compiled` raises
`BackendUnavailable` with the reason on every call, and the first failure warns once that
the slower pure-PyTorch scan is used instead.

Memory: only when a gradient is needed, the forward keeps the hidden state at the start of
every CHUNK_LEN steps ([batch, L / CHUNK_LEN, E, N], 1.8 MB at batch 8, L 251, E 576, N 24);
the backward recomputes each chunk's states from it, so nothing of size [batch, E, L, N] exists.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import threading
import warnings

import torch
from torch.autograd.function import once_differentiable

CHUNK_LEN = 64  # time steps per chunk: state checkpoints (forward) and recompute unit (backward)
ISA_ENV = "HEAR_SSAM_CPU_ISA"
CACHE_ENV = "HEAR_SSAM_CACHE"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cpp")
# No -ffast-math: the kernels' exp / softplus are written out with explicit SIMD and need IEEE
# evaluation order, and GCC < 13 would link crtfastmath.o, setting flush-to-zero for the whole
# Python process when the library loads.
_COMMON_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-DNDEBUG"]
_ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "generic": [],
}

_lock = threading.Lock()
_ext = None
_error: str | None = None


class _Unusable(RuntimeError):
    """No compiler, or a setting that makes a build pointless; the message is the whole reason."""


def _unavailable(reason: str):
    from .errors import BackendUnavailable
    return BackendUnavailable(reason)


def cpu_isa() -> str:
    """The instruction set to build for: HEAR_SSAM_CPU_ISA, else the one ATen uses on this CPU."""
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        if forced not in _ISA_FLAGS:
            raise _Unusable(f"{ISA_ENV}={forced!r} is not one of {sorted(_ISA_FLAGS)}")
        return forced
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "generic"
    try:
        cap = torch.backends.cpu.get_cpu_capability().upper()
    except Exception:  # an older torch without the query
        cap = "DEFAULT"
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(cap, "generic")


def build_dir(isa: str | None = None) -> str:
    """Where the extension for this torch, Python and instruction set is built and cached."""
    isa = isa or cpu_isa()
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hear_ssam")
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}"
    return os.path.join(root, "torch_extensions", tag, f"hear_ssam_scan_cpu_{isa}")


def _compiler_problem() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0] if cxx.split() else cxx) is None:
        return f"no C++ compiler ({cxx!r} not found; install g++ or set CXX)"
    if shutil.which("ninja") is None:
        try:  # PyPI's ninja ships the binary; torch's builder looks for it on PATH only
            import ninja
        except ImportError:
            return "no ninja build tool (pip install ninja, or hear_ssam[fast])"
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return None


class _BuildLock:
    """An exclusive flock on <build dir>.lock for the whole build-and-load: the kernel releases it
    if its holder dies, so unlike torch's own lock file it can never be left behind."""

    def __init__(self, path):
        self.path, self.fd = path + ".lock", None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: rely on torch's lock file alone
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


_VERIFIED = "hear_ssam_verified.json"  # {library file name: [size, mtime_ns]} of libraries that loaded


def _drop_unverified_libraries(path):
    """A library that never loaded here (a killed link, a truncated copy) can crash dlopen with
    SIGBUS instead of raising; delete it so that ninja links it again (about a second)."""
    import json
    try:
        with open(os.path.join(path, _VERIFIED)) as f:
            verified = json.load(f)
    except (OSError, ValueError):
        verified = {}
    for name in os.listdir(path):
        if name.endswith(".so"):
            st = os.stat(os.path.join(path, name))
            if verified.get(name) != [st.st_size, st.st_mtime_ns]:
                os.remove(os.path.join(path, name))


def _mark_verified(path, library):
    import json
    st = os.stat(library)
    tmp = os.path.join(path, _VERIFIED + ".tmp")
    with open(tmp, "w") as f:
        json.dump({os.path.basename(library): [st.st_size, st.st_mtime_ns]}, f)
    os.replace(tmp, os.path.join(path, _VERIFIED))


def _build(isa, fresh=False):
    import logging
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)  # its import logs "No CUDA runtime is found" on CPU machines
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    path = build_dir(isa)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _BuildLock(path):
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        _drop_unverified_libraries(path)
        try:  # torch's own lock file: only a killed build can have left it, since we hold the flock
            os.remove(os.path.join(path, "lock"))
        except OSError:
            pass
        ext = cpp_extension.load(
            name=f"hear_ssam_scan_cpu_{isa}", sources=[_SOURCE], build_directory=path,
            extra_cflags=_COMMON_FLAGS + _ISA_FLAGS[isa], extra_ldflags=["-fopenmp"],
            with_cuda=False, verbose=os.environ.get("HEAR_SSAM_BUILD_VERBOSE") == "1")
        _mark_verified(path, ext.__file__)
    return ext


def _short(e: BaseException, limit=600) -> str:
    """One line: the exception's first lines and its last ones (where compilers put the error)."""
    lines = [ln.strip() for ln in f"{type(e).__name__}: {e}".splitlines() if ln.strip()]
    if len(lines) > 6:
        lines = lines[:3] + ["..."] + lines[-3:]
    text = " | ".join(lines)
    return text if len(text) <= limit else text[:limit] + " ..."


def _load_extension():
    """The compiled module; raises BackendUnavailable (and remembers why) when it cannot be had."""
    global _ext, _error
    if _ext is not None:
        return _ext
    with _lock:
        if _ext is None and _error is None:
            try:
                isa = cpu_isa()
                problem = _compiler_problem()
                if problem:
                    raise _Unusable(problem)
                try:
                    _ext = _build(isa)
                except Exception:
                    # Perhaps a broken cache (files of a killed build, another system's): once more
                    # from scratch; a second failure is the real reason.
                    _ext = _build(isa, fresh=True)
            except _Unusable as e:
                _error = str(e)
            except ImportError as e:
                _error = f"the built extension does not load ({_short(e)})"
            except Exception as e:  # compile error, unusable compiler, unwritable cache, ...
                _error = f"C++ build failed ({_short(e)})"
            if _error is not None:
                warnings.warn(f"hear_ssam: compiled CPU selective scan unavailable ({_error}); "
                              "using the slower pure-PyTorch scan", RuntimeWarning, stacklevel=3)
        if _ext is None:
            raise _unavailable(f"compiled CPU selective scan unavailable: {_error}")
        return _ext


class _CompiledScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        ext = _load_extension()
        out, states, last = ext.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, CHUNK_LEN, True,
                                    return_last_state)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        if return_last_state:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, *unused):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias = _load_extension().bwd(
            u, delta, A, B, C, D, z, delta_bias, dout.float().contiguous(), states, ctx.delta_softplus, CHUNK_LEN)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None


def _f32(t):
    return None if t is None else t.float().contiguous()


def selective_scan_compiled(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False):
    """mamba_ssm's `selective_scan_fn` on CPU: u, delta, z [batch, E, L]; A [E, N]; B, C [batch, N, L];
    D, delta_bias [E]. Returns y [batch, E, L] in u's dtype (and, with return_last_state, the last
    state [batch, E, N] in fp32, which like mamba_ssm's is not differentiated)."""
    if B.dim() == 4 and B.shape[1] == 1:  # [batch, 1 group, N, L]
        B = B.squeeze(1)
    if C.dim() == 4 and C.shape[1] == 1:
        C = C.squeeze(1)
    if A.is_complex() or B.dim() != 3 or C.dim() != 3:
        raise NotImplementedError("compiled selective scan: real A and time-varying B, C [batch, N, L] only")
    if u.device.type != "cpu":
        raise ValueError(f"the compiled selective scan runs on CPU tensors, got {u.device}")
    dtype_in = u.dtype
    args = [_f32(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
    softplus, want_last = bool(delta_softplus), bool(return_last_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        res = _CompiledScan.apply(*args, softplus, want_last)
    else:  # inference: no autograd node, no saved states
        out, _, last = _load_extension().fwd(*args, softplus, CHUNK_LEN, False, want_last)
        res = (out, last) if want_last else out
    if want_last:
        return res[0].to(dtype_in), res[1]
    return res.to(dtype_in)


def load_compiled():
    """`selective_scan_compiled` once the extension is built and loaded; else BackendUnavailable."""
    _load_extension()
    return selective_scan_compiled


def extension_isa() -> str:
    """What the loaded build vectorises with: 'avx512/w16', 'avx2/w8' or 'generic/w4'."""
    return _load_extension().isa()
