"""The best model as it leaves this package: `best_model/model.onnx`, one ONNX graph from a batch of 28x28 uint8
bitmaps to class probabilities (every member in its view, averaged with its weight), and `PortableModel`, which runs
it with onnxruntime, numpy and nothing of torch. What the graph takes and gives is described once, in `model_card`:
the exporter (quickdraw.onnx_export) writes it into the graph's metadata and into config.json, and readers take the
class names from there."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from quickdraw.bitmaps import SIDE
from quickdraw.images import PREPROCESSING

ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "bitmaps", "probabilities"


def model_card(classes: list[str]) -> dict:
    """model.onnx's input, output and classes: its metadata (each entry as JSON text) and config.json's "onnx"."""
    return {
        "file": ONNX_FILE,
        "input": {"name": INPUT_NAME, "type": "uint8", "shape": ["batch", SIDE, SIDE],
                  "convention": PREPROCESSING["bitmap"]},
        "output": {"name": OUTPUT_NAME, "type": "float32", "shape": ["batch", len(classes)],
                   "meaning": "each class's probability, in the order of classes; a row sums to 1"},
        "classes": list(classes),
    }


@dataclass
class PortableModel:
    """model.onnx in an onnxruntime session, with the class names its metadata gives."""

    session: object  # onnxruntime.InferenceSession
    classes: list[str]

    @classmethod
    def from_bytes(cls, data: bytes, threads: int = 1) -> PortableModel:
        """The model from model.onnx's bytes; a ValueError says why they are not one."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
        try:
            session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
        except Exception as e:  # onnxruntime's own (InvalidProtobuf, Fail, ...) derive from Exception alone
            raise ValueError(f"not a model.onnx that this package exports ({type(e).__name__}: {e})") from None
        return cls(session, classes)

    def probabilities(self, bitmaps: np.ndarray) -> np.ndarray:
        """(N, len(classes)) float32 probabilities of (N, 28, 28) uint8 bitmaps."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(bitmaps, np.uint8)})[0]
