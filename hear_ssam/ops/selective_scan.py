"""The one dispatch point for the selective scan: which implementation runs, and why.

    y = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=b, delta_softplus=True)

Every backend has mamba_ssm's `selective_scan_fn` signature and fp32 maths, and is tested
against `selective_scan_ref` (tests/test_scan_backends.py). The choice, first match wins:

1. the `backend=` argument;
2. the environment variable HEAR_SSAM_SCAN (for tests and benchmarks; e.g. `reference`);
3. automatic, by the device of `u`: the first available of AUTO_ORDER[device type]
   (CPU: the compiled C++ scan, built on first use, else the chunked PyTorch scan with one
   warning; CUDA: mamba_ssm's kernels, else our Triton kernels, else chunked; any other
   device: chunked).

A backend named explicitly but unavailable raises, naming why; so does one given tensors of a
device it does not run on (the Triton backend excepted under TRITON_INTERPRET=1, whose
interpreter runs it on CPU for tests); the automatic choice skips what is unavailable.
`SCAN_BACKENDS` is a plain dict (name -> loader returning the function, or raising
`BackendUnavailable`), so a new implementation is one module plus one entry here; the rules
above are the data given to `ops.dispatch.Dispatch`, which applies them for every op.
"""
from __future__ import annotations

from .dispatch import Dispatch
from .errors import BackendUnavailable
from .selective_scan_chunked import selective_scan_chunked
from .selective_scan_ref import selective_scan_ref

SCAN_ENV = "HEAR_SSAM_SCAN"


def _mamba_ssm_cuda():
    """mamba_ssm's fused CUDA kernel, when its compiled extension imports."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # ImportError, or a CUDA extension that fails to load
        raise BackendUnavailable(f"mamba_ssm's CUDA kernels do not import ({type(e).__name__}: {e})") from None
    return selective_scan_fn


def _compiled():
    """Our C++ CPU kernels (ops/selective_scan_cpu.py), built on first use; falls back with one warning."""
    from .selective_scan_cpu import load_compiled
    return load_compiled()


def _triton():
    """Our Triton kernels (ops/selective_scan_triton.py): CUDA without any CUDA build."""
    from .selective_scan_triton import load_triton
    return load_triton()


SCAN_BACKENDS = {
    "cuda": _mamba_ssm_cuda,            # mamba_ssm's fused kernel (CUDA tensors only)
    "triton": _triton,                  # Triton forward + backward (CUDA tensors only)
    "compiled": _compiled,              # C++ / OpenMP / SIMD forward + backward (CPU tensors only)
    "chunked": lambda: selective_scan_chunked,   # pure PyTorch, bounded memory, any device
    "reference": lambda: selective_scan_ref,     # plain loop, the ground truth of the tests
}
# Which backends serve which device type, fastest first. A CUDA-only backend is never
# picked for CPU tensors and vice versa.
AUTO_ORDER = {"cuda": ("cuda", "triton", "chunked"), "cpu": ("compiled", "chunked")}
DEVICE_ONLY = {"cuda": "cuda", "triton": "cuda", "compiled": "cpu"}
SCAN = Dispatch("selective-scan", SCAN_BACKENDS, env=SCAN_ENV, auto_order=AUTO_ORDER, fallback="chunked",
                device_only=DEVICE_ONLY, interpreted_on_any_device={"triton": "TRITON_INTERPRET"})
load_backend = SCAN.load  # name -> scan function (cached), or BackendUnavailable


def resolve_backend(device_type: str, backend: str | None = None) -> str:
    """The backend name that `selective_scan` uses for tensors on `device_type`."""
    return SCAN.resolve(device_type, backend)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   backend: str | None = None):
    """mamba_ssm's `selective_scan_fn`: u, delta, z [batch, E, L]; A [E, N]; B, C [batch, N, L]."""
    fn = load_backend(resolve_backend(u.device.type, backend))
    return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
