"""Import optional heavy backends at the point of use, with a typed, helpful error."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingBackendError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingBackendError` naming the pip extra.

    Example:
        >>> np = require("numpy", "dev", "tests")
    """
    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything on import
        raise MissingBackendError(
            f"{purpose} needs the Python package '{module}', which cannot be imported",
            f"{type(e).__name__}: {e}",
            f'install it with: pip install "lossgrid[{extra}]"',
        ) from None
