"""best_model/'s portable files, written from its members' networks: model.onnx (quickdraw.portable describes it) by
torch's exporter (`torch.onnx.export`, its TorchScript path), and each member's weights as safetensors.

The TorchScript path, not torch's default dynamo one: for these networks (no control flow, one dynamic dimension) both
give graphs that onnxruntime computes as torch does, and it exports in a tenth of a second where the dynamo path takes
3 s and 2 s more to import onnxscript and torch.export, at the end of every search and every report that exports
(benchmarks/README.md). torch deprecates it from 2.9 on; requirements.txt pins torch, and `dynamo=True` with
`dynamic_shapes` is the way back."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import safetensors.torch
import torch
from torch import nn

from quickdraw import strict_json
from quickdraw.bitmaps import SIDE
from quickdraw.compute import Compute
from quickdraw.portable import INPUT_NAME, OUTPUT_NAME, model_card
from quickdraw.training import view_probabilities


class WholeModel(nn.Module):
    """The best model as one module, as `predict` computes it in fp32: uint8 bitmaps (N, 28, 28) in, each member's
    probabilities in its view (as drawn, or averaged with the mirror image), weighted and summed, out."""

    def __init__(self, networks: list[nn.Module], members: list[dict]):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.views = [(float(member["weight"]), bool(member["mirrored"])) for member in members]
        self.compute = Compute(torch.device("cpu"))

    def forward(self, bitmaps: torch.Tensor) -> torch.Tensor:
        inputs = self.compute.inputs(bitmaps.unsqueeze(1))
        total = torch.zeros((), dtype=torch.float32)
        for network, (weight, mirrored) in zip(self.networks, self.views):
            total = total + weight * view_probabilities(network, inputs, mirrored)
        return total


def onnx_model(networks: list[nn.Module], members: list[dict], classes: list[str]) -> bytes:
    """model.onnx's bytes: the members' networks (in eval mode) as one graph with a dynamic batch size, and the model
    card in its metadata."""
    whole = WholeModel(networks, members).eval()
    example = torch.zeros((2, SIDE, SIDE), dtype=torch.uint8)
    graph = io.BytesIO()
    with quiet_exporter():
        torch.onnx.export(whole, (example,), graph, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_from_string(graph.getvalue())
    onnx.helper.set_model_props(proto, {key: strict_json.dumps(value) for key, value in model_card(classes).items()})
    proto.doc_string = "quickdraw-tune's best model: Quick, Draw! bitmaps to class probabilities"
    return proto.SerializeToString()


@contextlib.contextmanager
def quiet_exporter():
    """The exporter without its log lines and warnings (its own deprecation, see above): a report's output stays the
    report's."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def safetensors_weights(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as safetensors' bytes."""
    return safetensors.torch.save({name: tensor.contiguous() for name, tensor in state.items()})
