"""Resolve ``module:attr`` and ``path/to/file.py:attr`` specs to Python objects."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

from ._files import input_file_problem
from .errors import ConfigError


def load_object(spec: str, what: str = "object") -> Any:
    """Import the object named by ``package.module:attr`` or ``file.py:attr``."""
    if ":" not in spec:
        raise ConfigError(f"Cannot read {what} spec {spec!r}", "it has no ':'",
                          "write path/to/file.py:name or package.module:name")
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"Cannot read {what} spec {spec!r}", "module or name is empty",
                          "write path/to/file.py:name or package.module:name")
    if target.endswith(".py") or os.sep in target:

        problem = input_file_problem(target)
        if problem:
            raise ConfigError(f"Cannot import {what} file {target}", problem, "check the path before the ':'")
        name = "lossgrid_user_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(name, target)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"Cannot import {target}", hint="pass a Python source file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # user code: report whatever it raised
            sys.modules.pop(name, None)
            raise ConfigError(f"Importing {target} failed", f"{type(e).__name__}: {e}",
                              "fix the error in that file") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"Cannot import module {target!r} for {what} {spec!r}", str(e),
                              "check the module name, or give a file path like path/to/file.py:name") from None
        except Exception as e:
            raise ConfigError(f"Importing {target} failed", f"{type(e).__name__}: {e}",
                              "fix the error in that module") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{target} has no attribute {attr!r}", hint=f"check the name after ':' in {spec!r}") from None
