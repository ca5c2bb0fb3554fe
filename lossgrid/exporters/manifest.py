"""The manifest stored in every lossgrid ONNX file: what the graph inputs are and
how to compute them from a model's state (mirrored here as a dataclass)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ExportError

METADATA_KEY = "lossgrid.manifest"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """Graph interface of an exported model.

    ``inputs`` are the weight inputs in graph order with their per-point shapes
    (each graph input is ``[k, *shape]``); names with ``|folded:`` are
    Conv+BatchNorm pairs folded per grid point, names ending ``|T`` Linear
    weights transposed to ``[in, out]``; ``state_names`` are the model's
    floating-point state_dict entries the inputs are computed from. With loss
    outputs, the graph also takes ``label_input`` (class indices ``[batch]``) and
    returns per-sample cross-entropy ``loss`` and ``correct`` (0/1), each ``[k, batch]``.
    """

    k: int
    data_input: str
    data_shape: list[Any]
    data_dtype: str
    output: str
    inputs: list[dict[str, Any]]
    state_names: list[str]
    folds: list[dict[str, Any]] = field(default_factory=list)
    label_input: str | None = None
    loss_outputs: list[str] = field(default_factory=list)
    model: str = ""
    opset: int = 17
    exporter: str = "torchscript"
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """Parse and validate a manifest; :class:`ExportError` names what is wrong."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ExportError(f"The manifest is a JSON {type(data).__name__}, expected an object",
                              hint="re-export the model with lossgrid export")
        if data.get("version") != MANIFEST_VERSION:
            raise ExportError(f"Unsupported manifest version {data.get('version')!r}",
                              hint="re-export the model with this version of lossgrid")
        problem = _schema_problem(data)
        if problem:
            raise ExportError(f"The manifest is malformed: {problem}", hint="re-export the model with lossgrid export")
        return cls(**data)

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]


_FIELDS: dict[str, tuple[type, ...]] = {
    "k": (int,), "data_input": (str,), "data_shape": (list,), "data_dtype": (str,), "output": (str,),
    "inputs": (list,), "state_names": (list,), "folds": (list,), "label_input": (str, type(None)),
    "loss_outputs": (list,), "model": (str,), "opset": (int,), "exporter": (str,), "version": (int,),
}
_REQUIRED = ("k", "data_input", "data_shape", "data_dtype", "output", "inputs", "state_names")


def _schema_problem(data: dict[str, Any]) -> str | None:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    for key in _REQUIRED:
        if key not in data:
            return f"field {key!r} is missing"
    for key, value in data.items():
        types = _FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"field {key!r} is {type(value).__name__}, expected {want}"
    if data["k"] < 1:
        return f"field 'k' is {data['k']}, expected at least 1"
    for i, entry in enumerate(data["inputs"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])):
            return f"inputs[{i}] is not {{'name': str, 'shape': [int, ...]}}"
    if not all(isinstance(n, str) for n in data["state_names"] + data["loss_outputs"]):
        return "state_names and loss_outputs must be lists of strings"
    for i, fold in enumerate(data.get("folds", [])):
        if not (isinstance(fold, dict) and isinstance(fold.get("conv"), str) and isinstance(fold.get("bn"), str)
                and isinstance(fold.get("eps"), (int, float))):
            return f"folds[{i}] is not {{'conv': str, 'bn': str, 'eps': float, ...}}"
    return None


def read_manifest(model_proto: Any, source: str = "ONNX file") -> Manifest:
    """The manifest of a loaded ``onnx.ModelProto``, or an :class:`ExportError`."""
    for prop in model_proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return Manifest.from_json(prop.value)
            except (ValueError, TypeError) as e:
                raise ExportError(f"The lossgrid manifest in {source} is corrupt", str(e),
                                  "re-export the model with lossgrid export") from None
    raise ExportError(f"{source} has no lossgrid manifest",
                      "only graphs written by lossgrid export list their weight inputs",
                      "export the model with: lossgrid export --model SPEC --out model.onnx")
