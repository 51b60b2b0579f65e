"""Errors of the numerics layer (own module so that backends and the dispatch share them
without importing each other)."""


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here (not installed, not compiled, wrong device)."""
