"""ONNX Runtime sessions for our exported graphs, on the CPU or verified on CUDA.

Both the exporter (its parity check) and the onnxruntime runner build sessions
here, so neither imports the other for it. ONNX Runtime silently falls back to
the CPU when a GPU provider cannot start; :func:`make_session` checks
``session.get_providers()`` and turns that into a :class:`MissingBackendError`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import Any

from ..errors import ConfigError, ExportError, MissingBackendError

#: how to install ONNX Runtime: one build only, since both install into the same package directory
INSTALL_HINT = ('install one build: pip install "lossgrid[cpu]" (the CPU build, onnxruntime) or '
                'pip install "lossgrid[gpu-cuda13]" / "lossgrid[gpu]" (the CUDA build, onnxruntime-gpu, for CUDA 13 / '
                "12; it runs on the CPU too)")


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or :class:`MissingBackendError` saying which build to install."""
    try:
        return importlib.import_module("onnxruntime")
    except Exception as e:  # ImportError, or a broken install raising anything on import
        raise MissingBackendError("The onnxruntime backend needs ONNX Runtime, which cannot be imported",
                                  f"{type(e).__name__}: {e}", INSTALL_HINT) from None


def installed_builds() -> dict[str, str]:
    """The ONNX Runtime distributions installed here, ``{name: version}`` (``onnxruntime``, ``onnxruntime-gpu``)."""
    found = {}
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def missing_cuda_provider() -> MissingBackendError:
    """Why ONNX Runtime's CUDA execution provider is missing here, and what to do about it."""
    builds = installed_builds()
    providers = ", ".join(onnxruntime().get_available_providers())
    which = ", ".join(f"{n} {v}" for n, v in builds.items()) or "an unpackaged onnxruntime"
    if len(builds) > 1:
        return MissingBackendError(
            "ONNX Runtime's CUDA execution provider is not available: onnxruntime and onnxruntime-gpu are both "
            "installed", f"the two builds ({which}) overwrite each other's files in one package directory; "
            f"available providers: {providers}",
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu (alone)")
    if "onnxruntime-gpu" in builds:
        return MissingBackendError(
            "ONNX Runtime's CUDA execution provider is not available",
            f"onnxruntime-gpu {builds['onnxruntime-gpu']} is installed but offers only {providers}: its CUDA "
            "libraries (CUDA runtime, cuDNN) cannot be loaded, or no GPU is visible",
            "install the CUDA and cuDNN versions this onnxruntime-gpu is built for, or use --backend torch")
    return MissingBackendError(
        "ONNX Runtime's CUDA execution provider is not available",
        f"the installed ONNX Runtime is the CPU build ({which}; available providers: {providers})",
        'pip uninstall -y onnxruntime, then pip install "lossgrid[gpu-cuda13]" (CUDA 13) or "lossgrid[gpu]" '
        "(CUDA 12), on a machine with a CUDA GPU; or use --backend torch")


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's own exception types (``Fail``, ``RuntimeException``, ``EPFail``, ...), which
    derive from ``Exception`` only, so that callers can catch them as failures of a run."""
    ort = onnxruntime()
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)
                 and v.__module__.startswith("onnxruntime")) if state is not None else ()


def onnxruntime_installed() -> bool:
    """Whether some ONNX Runtime build can be found (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def cuda_provider_available() -> bool:
    """Whether the installed ONNX Runtime build has the CUDA execution provider."""
    try:
        return "CUDAExecutionProvider" in onnxruntime().get_available_providers()
    except MissingBackendError:
        return False


def make_session(model_bytes: bytes, device: str = "cpu", threads: int | None = None,
                 cuda_graph: bool = False) -> Any:
    """An ``InferenceSession`` on the CPU, or on CUDA verified with ``get_providers()``.

    Args:
        model_bytes: the serialized ONNX model.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: intra-op threads (CPU); ``None`` lets ONNX Runtime decide.
        cuda_graph: capture the CUDA run in a CUDA graph (the CUDA provider's
            ``enable_cuda_graph``); every input and output must then be bound
            with IOBinding to the same device addresses and shapes on every run.
            ONNX Runtime refuses such a session (it raises) when some node would
            run on the CPU (shape computations, missing CUDA kernels) or the
            graph has control flow; callers decide whether to retry without.

    Example:
        >>> session = make_session(open("model.onnx", "rb").read())  # doctest: +SKIP
    """
    import torch

    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    dev = torch.device(device)
    if dev.type == "cpu":
        return _session(ort, model_bytes, opts, ["CPUExecutionProvider"])
    if dev.type != "cuda":
        raise ConfigError(f"The onnxruntime backend cannot run on {device}", hint="use --device cpu or cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise missing_cuda_provider()
    # the CUDA provider runs fp32 convolutions and GEMMs in TF32 unless told otherwise; lossgrid's
    # ONNX Runtime runs are strict IEEE fp32 (it is what they are labelled)
    options = {"device_id": str(dev.index or 0), "use_tf32": "0"}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    session = _session(ort, model_bytes, opts, [("CUDAExecutionProvider", options), "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise MissingBackendError("ONNX Runtime fell back from CUDA to the CPU",
                                  f"session providers: {session.get_providers()}",
                                  "check the CUDA and cuDNN libraries onnxruntime-gpu needs, or use --device cpu")
    return session


def _session(ort: Any, model_bytes: bytes, opts: Any, providers: list[Any]) -> Any:
    """``InferenceSession``, its own exceptions (which derive from ``Exception`` only) as :class:`ExportError`."""
    try:
        return ort.InferenceSession(model_bytes, opts, providers=providers)
    except onnxruntime_errors() as e:
        raise ExportError("ONNX Runtime could not load the exported graph", f"{type(e).__name__}: {e}",
                          "use --backend torch for this model") from e
