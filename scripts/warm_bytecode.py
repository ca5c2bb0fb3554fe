"""Write the bytecode of the modules lossgrid's commands and tests import, and only those, after an install.

``make install`` installs with ``pip --no-compile`` (compiling all of torch takes a minute); without bytecode,
every Python process that imports torch would compile it again where ``PYTHONDONTWRITEBYTECODE`` is set, as on
this project's machines: 7.7 s to import torch instead of 3.4 s. Run with that variable unset.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

#: the heavy imports outside lossgrid: its dependencies and the tests' (each optional: a missing one is skipped)
OTHERS = ("torch", "torch.distributed.run", "torch.func", "torch.onnx", "onnx", "onnxruntime", "onnxscript", "h5py",
          "matplotlib.pyplot", "plotly.graph_objects", "sklearn.datasets", "safetensors.torch", "click", "PIL.Image",
          "pytest", "numpy")


def main() -> int:
    if sys.flags.dont_write_bytecode:
        print("warm_bytecode: PYTHONDONTWRITEBYTECODE is set, nothing would be written", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    import lossgrid

    names = list(OTHERS) + [m.name for m in pkgutil.walk_packages(lossgrid.__path__, "lossgrid.")
                            if not m.name.endswith("__main__")]
    skipped = [name for name in names if not _imports(name)]
    print(f"warm_bytecode: {len(names) - len(skipped)} modules and their imports compiled"
          + (f"; not importable here: {', '.join(skipped)}" if skipped else ""))
    return 0


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # an optional package that is not installed, or one that needs a GPU
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
