"""Typed exceptions of lossgrid.

Every error a user can cause derives from :class:`LossgridError`. Its message is
one paragraph: what happened, why, and how to fix it. The CLI turns these into
exit code 1 without a traceback.
"""

from __future__ import annotations


class LossgridError(Exception):
    """Root of all lossgrid errors.

    Args:
        what: what went wrong.
        why: the underlying reason, if known.
        hint: how to fix it, if known.
    """

    def __init__(self, what: str, why: str | None = None, hint: str | None = None) -> None:
        self.what = what
        self.why = why
        self.hint = hint
        parts = [what.rstrip(".") + "."]
        if why:
            parts.append(f"Why: {why.rstrip('.')}.")
        if hint:
            parts.append(f"Hint: {hint.rstrip('.')}.")
        super().__init__(" ".join(parts))


class ConfigError(LossgridError, ValueError):
    """A setting is malformed or inconsistent (grid, norms, options)."""


class ModelLoadError(LossgridError):
    """A model factory or checkpoint cannot be loaded or does not match."""


class DataLoadError(LossgridError):
    """An evaluation data set cannot be loaded."""


class DirectionError(LossgridError):
    """A direction file is missing, corrupt or does not match the model."""


class SurfaceFileError(LossgridError):
    """A surface file is corrupt, unwritable, or belongs to another run."""


class EvaluationError(LossgridError):
    """The model or loss failed while evaluating a grid point."""


class MissingBackendError(LossgridError, ImportError):
    """An optional backend (GPU package, plotting library) is not installed."""


class ExportError(LossgridError):
    """A model cannot be exported to ONNX."""


class ResourceError(LossgridError):
    """The machine ran out of something (memory) that a smaller setting would need less of."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory failure of torch, numpy or ONNX Runtime (CPU or GPU)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e)
    return any(m in text for m in ("out of memory", "can't allocate memory", "Failed to allocate memory",
                                   "std::bad_alloc"))
