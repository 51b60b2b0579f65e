"""Building and loading the compiled CPU kernels (csrc/*.cpp), on first use, once per process.

    ext = CpuExtension("hear_ssam_scan_cpu", "selective_scan_cpu.cpp", "compiled CPU selective scan",
                       fallback="the slower pure-PyTorch scan")
    module = ext.load()          # builds once (~30 s), later loads from the cache; or BackendUnavailable

`torch.utils.cpp_extension.load` compiles each source into a cache keyed by torch version,
Python version and instruction set:

    $HEAR_SSAM_CACHE/torch_extensions/torch<version>-py<XY>/<name>_<isa>/
    (HEAR_SSAM_CACHE defaults to $XDG_CACHE_HOME/hear_ssam, else ~/.cache/hear_ssam)

The instruction set is the one ATen itself dispatches to on this CPU (avx512, avx2, or a
portable `generic` build for anything else), so a cache shared between machines never hands
an AVX-512 binary to a CPU without it. HEAR_SSAM_CPU_ISA=avx512|avx2|generic forces one, e.g.
to test the fallbacks; HEAR_SSAM_BUILD_VERBOSE=1 shows the compiler's output.

A failure (no compiler, compile error, a cached library that does not load even after one
rebuild) is remembered for the life of the process: `load` raises `BackendUnavailable` with
the reason on every call, and the first failure warns once that `fallback` is used instead.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import threading
import warnings

import torch

from .errors import BackendUnavailable

ISA_ENV = "HEAR_SSAM_CPU_ISA"
CACHE_ENV = "HEAR_SSAM_CACHE"
CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# No -ffast-math: the kernels' exp / softplus are written out with explicit SIMD and need IEEE
# evaluation order, and GCC < 13 would link crtfastmath.o, setting flush-to-zero for the whole
# Python process when the library loads.
COMMON_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-DNDEBUG"]
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "generic": [],
}


class _Unusable(RuntimeError):
    """No compiler, or a setting that makes a build pointless; the message is the whole reason."""


def cpu_isa() -> str:
    """The instruction set to build for: HEAR_SSAM_CPU_ISA, else the one ATen uses on this CPU."""
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        if forced not in ISA_FLAGS:
            raise _Unusable(f"{ISA_ENV}={forced!r} is not one of {sorted(ISA_FLAGS)}")
        return forced
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "generic"
    try:
        cap = torch.backends.cpu.get_cpu_capability().upper()
    except Exception:  # an older torch without the query
        cap = "DEFAULT"
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(cap, "generic")


def build_dir(name: str, isa: str | None = None) -> str:
    """Where extension `name` for this torch, Python and instruction set is built and cached."""
    isa = isa or cpu_isa()
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hear_ssam")
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}"
    return os.path.join(root, "torch_extensions", tag, f"{name}_{isa}")


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


def _short(e: BaseException, limit=600) -> str:
    """One line: the exception's first lines and its last ones (where compilers put the error)."""
    lines = [ln.strip() for ln in f"{type(e).__name__}: {e}".splitlines() if ln.strip()]
    if len(lines) > 6:
        lines = lines[:3] + ["..."] + lines[-3:]
    text = " | ".join(lines)
    return text if len(text) <= limit else text[:limit] + " ..."


class CpuExtension:
    """One C++ source under csrc/, built on first `load()` into its own cache folder
    (`build_dir(name)`), loaded once per process; a failure is remembered with its reason."""

    def __init__(self, name: str, source: str, what: str, fallback: str):
        self.name, self.source = name, os.path.join(CSRC, source)
        self.what, self.fallback = what, fallback
        self._lock = threading.Lock()
        self._module = None
        self._error: str | None = None

    def _build(self, isa, fresh=False):
        import logging
        log = logging.getLogger("torch.utils.cpp_extension")
        level = log.level
        log.setLevel(logging.ERROR)  # its import logs "No CUDA runtime is found" on CPU machines
        try:
            from torch.utils import cpp_extension
        finally:
            log.setLevel(level)
        path = build_dir(self.name, isa)
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
            module = cpp_extension.load(
                name=f"{self.name}_{isa}", sources=[self.source], build_directory=path,
                extra_cflags=COMMON_FLAGS + ISA_FLAGS[isa], extra_ldflags=["-fopenmp"],
                with_cuda=False, verbose=os.environ.get("HEAR_SSAM_BUILD_VERBOSE") == "1")
            _mark_verified(path, module.__file__)
        return module

    def load(self):
        """The compiled module; raises BackendUnavailable (and remembers why) when it cannot be had."""
        if self._module is not None:
            return self._module
        with self._lock:
            if self._module is None and self._error is None:
                try:
                    isa = cpu_isa()
                    problem = _compiler_problem()
                    if problem:
                        raise _Unusable(problem)
                    try:
                        self._module = self._build(isa)
                    except Exception:
                        # Perhaps a broken cache (files of a killed build, another system's): once
                        # more from scratch; a second failure is the real reason.
                        self._module = self._build(isa, fresh=True)
                except _Unusable as e:
                    self._error = str(e)
                except ImportError as e:
                    self._error = f"the built extension does not load ({_short(e)})"
                except Exception as e:  # compile error, unusable compiler, unwritable cache, ...
                    self._error = f"C++ build failed ({_short(e)})"
                if self._error is not None:
                    warnings.warn(f"hear_ssam: {self.what} unavailable ({self._error}); "
                                  f"using {self.fallback}", RuntimeWarning, stacklevel=3)
            if self._module is None:
                raise BackendUnavailable(f"{self.what} unavailable: {self._error}")
            return self._module
