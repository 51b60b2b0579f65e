"""Make heareval 2021.1.3's own commands work as typed on torch >= 2.6 and Lightning 1.9.

    python -m eval_suites.heareval_compat install-startup [--uninstall] [--target DIR]

copies this file into an environment's site-packages as `hear_ssam_heareval_startup.py`,
beside `hear_ssam_heareval_startup.pth`, whose one line installs an import hook at every
interpreter start. The hook costs one string comparison per import; right after
`heareval.predictions.task_predictions` has loaded it runs `patch_heareval_predictions()`:

- torch >= 2.6 loads checkpoints weights-only by default, and heareval re-reads its own
  best-epoch Lightning checkpoints (`torch.load` for the epoch, `trainer.test(ckpt_path=...)`)
  whose "hyper_parameters" hold the classes and functions of heareval's probe grid. Exactly
  those are added to torch's weights-only allowlist (HEAREVAL_CHECKPOINT_GLOBALS): not a
  module, not weights_only=False, so every other file stays under the safe default. Unpickled
  by a crafted file, each of them can at most build a norm layer or an optimizer, or fill a
  tensor in place; none reads files or runs commands.
- heareval sets `trainer.fit_loop.current_epoch` before testing an event task, so that the
  test uses the post-processing chosen at the best validation epoch; Lightning 1.9's FitLoop
  has no such attribute (the assignment only adds an unused one, and an event task scored at
  every validation then fails with a KeyError), so FitLoop gets a property that reads and
  writes the epoch progress counter.

The module imports only the standard library at interpreter start (torch and Lightning are
imported by the hook, after heareval has imported them itself), and nothing of this project,
because it runs from site-packages on its own.
"""
from __future__ import annotations

import sys  # the only import at interpreter start; the others are inside the functions that use them

HOOKED_MODULE = "heareval.predictions.task_predictions"
INSTALLED_NAME = "hear_ssam_heareval_startup"
PTH_LINE = f"import {INSTALLED_NAME}; {INSTALLED_NAME}.install_import_hook()\n"

# (module, name) of every class/function heareval's grids (PARAM_GRID, FAST_PARAM_GRID,
# FASTER_PARAM_GRID) can put into a probe's hyper-parameters, which Lightning pickles into
# each checkpoint; the grid key each one comes from is beside it.
HEAREVAL_CHECKPOINT_GLOBALS = (
    ("torch.nn.modules.batchnorm", "BatchNorm1d"),  # hidden_norm
    ("torch.nn.modules.linear", "Identity"),  # embedding_norm
    ("torch.nn.init", "xavier_uniform_"),  # initialization
    ("torch.nn.init", "xavier_normal_"),  # initialization
    ("torch.optim.adam", "Adam"),  # optim
)


def heareval_checkpoint_globals() -> list:
    """The objects named by HEAREVAL_CHECKPOINT_GLOBALS (imports torch)."""
    import importlib
    return [getattr(importlib.import_module(module), name) for module, name in HEAREVAL_CHECKPOINT_GLOBALS]


def allow_heareval_checkpoint_globals(extra=()) -> list:
    """Add heareval's checkpoint globals, and `extra` objects, to torch's weights-only
    allowlist (idempotent) -> the objects added. A torch without weights-only loading by
    default (< 2.6) needs nothing; one without an allowlist (< 2.4) is left alone."""
    import torch
    allowed = heareval_checkpoint_globals() + list(extra)
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(allowed)
    return allowed


def give_fitloop_a_current_epoch_setter():
    """FitLoop.current_epoch as a read/write view of the epoch progress counter, which
    `trainer.current_epoch` (and so a LightningModule's current_epoch) reads. Idempotent:
    a FitLoop whose current_epoch is already a property is left alone."""
    from pytorch_lightning.loops.fit_loop import FitLoop
    if isinstance(getattr(FitLoop, "current_epoch", None), property):
        return

    def _get(self):
        return self.epoch_progress.current.completed

    def _set(self, value):
        self.epoch_progress.current.completed = value
        self.epoch_progress.current.processed = value
    FitLoop.current_epoch = property(_get, _set)


def patch_heareval_predictions():
    """Both fixes of the module docstring (idempotent)."""
    allow_heareval_checkpoint_globals()
    give_fitloop_a_current_epoch_setter()


class _HookAfterLoading:
    """Executes a module with its own loader, then runs `hook`; the module keeps its own
    loader as __loader__ and __spec__.loader (tracebacks and inspect read source through it)."""

    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.hook()


class RunAfterImport:
    """A sys.meta_path finder that finds nothing itself: for `module_name` it asks the finders
    after it and wraps the loader they return, so that `hook()` runs right after the module
    has loaded (and again if it is reloaded). Every other name costs one comparison."""

    def __init__(self, module_name: str, hook):
        self.module_name, self.hook = module_name, hook

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module_name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HookAfterLoading(spec.loader, self.hook)
        return spec


def install_import_hook():
    """Put a RunAfterImport(HOOKED_MODULE, patch_heareval_predictions) first on sys.meta_path
    (once per process); if heareval's predictions module is already imported, patch now."""
    if not any(isinstance(f, RunAfterImport) and f.module_name == HOOKED_MODULE for f in sys.meta_path):
        sys.meta_path.insert(0, RunAfterImport(HOOKED_MODULE, patch_heareval_predictions))
    if HOOKED_MODULE in sys.modules:
        patch_heareval_predictions()


def site_packages() -> Path:
    """The running environment's site-packages (sysconfig's purelib)."""
    import sysconfig
    from pathlib import Path
    return Path(sysconfig.get_paths()["purelib"])


def install(target: Path | None = None) -> list:
    """Copy this module into `target` (default: site-packages) as INSTALLED_NAME.py and write
    INSTALLED_NAME.pth that installs the hook at interpreter start -> the paths written.
    Idempotent: an earlier copy is replaced."""
    import shutil
    from pathlib import Path
    target = Path(target) if target is not None else site_packages()
    if not target.is_dir():
        raise FileNotFoundError(f"{target} is not a folder: pass an existing site-packages folder as --target")
    module, pth = target / f"{INSTALLED_NAME}.py", target / f"{INSTALLED_NAME}.pth"
    shutil.copyfile(Path(__file__), module)
    pth.write_text(PTH_LINE)
    return [module, pth]


def uninstall(target: Path | None = None) -> list:
    """Remove what install() wrote from `target` (default: site-packages) -> the paths removed."""
    from pathlib import Path
    target = Path(target) if target is not None else site_packages()
    removed = []
    for path in (target / f"{INSTALLED_NAME}.pth", target / f"{INSTALLED_NAME}.py"):
        if path.exists():
            path.unlink()
            removed.append(path)
    cache = target / "__pycache__"
    for compiled in cache.glob(f"{INSTALLED_NAME}.*.pyc") if cache.is_dir() else ():
        compiled.unlink()
        removed.append(compiled)
    return removed
