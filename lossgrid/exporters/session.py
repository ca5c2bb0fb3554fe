"""ONNX Runtime sessions for our exported graphs, on the CPU or verified on CUDA.

Both the exporter (its parity check) and the onnxruntime runner build sessions
here, so neither imports the other for it. ONNX Runtime silently falls back to
the CPU when a GPU provider cannot start; :func:`make_session` checks
``session.get_providers()`` and turns that into a :class:`MissingBackendError`.
"""

from __future__ import annotations

from typing import Any

from .._optional import require
from ..errors import ConfigError, ExportError, MissingBackendError


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or :class:`MissingBackendError`."""
    return require("onnxruntime", "gpu", "The onnxruntime backend")


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's own exception types (``Fail``, ``RuntimeException``, ``EPFail``, ...), which
    derive from ``Exception`` only, so that callers can catch them as failures of a run."""
    ort = onnxruntime()
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)
                 and v.__module__.startswith("onnxruntime")) if state is not None else ()


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
        raise MissingBackendError("ONNX Runtime's CUDA execution provider is not available",
                                  f"available providers: {', '.join(ort.get_available_providers())}",
                                  'install it with: pip install "lossgrid[gpu]" (onnxruntime-gpu, which replaces '
                                  "the onnxruntime package), on a machine with a CUDA GPU")
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
