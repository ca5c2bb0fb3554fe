"""Model -> ONNX exporters with weights as graph inputs (see the exporters issue)."""
