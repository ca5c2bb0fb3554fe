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
        data = json.loads(text)
        if data.get("version") != MANIFEST_VERSION:
            raise ExportError(f"Unsupported manifest version {data.get('version')}",
                              hint="re-export the model with this version of lossgrid")
        return cls(**data)

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]


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
