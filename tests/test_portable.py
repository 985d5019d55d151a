"""model.onnx, the best model as one ONNX graph: onnxruntime's probabilities equal torch's (fp32) for `seed`, `vgg-bn`
and an ensemble of both with a mirrored view, for a batch of 1 and of 1,000 real drawings; its metadata describes it;
and docs/models.md's script classifies a PNG with onnxruntime, numpy and Pillow in a fresh process that never
imports torch. (test_predict checks the model.onnx a real search exports, on its whole test split.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from conftest import REPO, SHARED_CLASSES, source_drawings
from quickdraw.best_model import BestModel
from quickdraw.compute import Compute
from quickdraw.model import MODELS
from quickdraw.onnx_export import onnx_model, safetensors_weights
from quickdraw.portable import INPUT_NAME, OUTPUT_NAME, PortableModel, model_card

CLASSES = list(SHARED_CLASSES)
MEMBERS = {  # (model, weight in the average, mirrored view)
    "seed": [("seed", 1.0, False)],
    "vgg-bn": [("vgg-bn", 1.0, False)],
    "ensemble": [("seed", 0.3, False), ("vgg-bn", 0.5, True), ("seed", 0.2, True)],
}
DOCS_SCRIPT = re.compile(r"<!-- classify\.py:.*?-->\n```python\n(?P<code>.*?)```", re.S)


def networks_of(members: list[tuple[str, float, bool]], drawings: np.ndarray) -> list[torch.nn.Module]:
    """The members' networks, each trained for an epoch on `drawings` (labelled by class file, in order), so that their
    probabilities are far from uniform and batch norm holds real statistics."""
    torch.manual_seed(0)
    labels = torch.arange(len(CLASSES)).repeat_interleave(len(drawings) // len(CLASSES))
    inputs = torch.from_numpy(drawings[:len(labels)]).unsqueeze(1).float() / 255
    networks = []
    for model, _, _ in members:
        network = MODELS[model].build(len(CLASSES), 0.5)
        optimizer = torch.optim.Adam(network.parameters(), 3e-3)
        for batch in torch.randperm(len(labels)).split(50):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(network(inputs[batch]), labels[batch]).backward()
            optimizer.step()
        networks.append(network.eval())
    return networks


def entries(members: list[tuple[str, float, bool]]) -> list[dict]:
    return [{"model": model, "dropout": 0.5, "weight": weight, "mirrored": mirrored} for model, weight, mirrored in members]


@pytest.fixture(scope="module")
def drawings() -> np.ndarray:
    """1,000 real drawings (synthetic where ../shared/quickdraw is absent), the last of each class file."""
    each = -(-1000 // len(CLASSES))  # 167: 1,002 drawings, the first 1,000 kept
    return np.concatenate([source_drawings(name)[-each:] for name in CLASSES]).reshape(-1, 28, 28)[:1000]


@pytest.mark.parametrize("name", MEMBERS)
def test_onnxruntime_gives_torchs_probabilities(name, drawings):
    members = MEMBERS[name]
    networks = networks_of(members, drawings)
    portable = PortableModel.from_bytes(onnx_model(networks, entries(members), CLASSES))
    torch_model = BestModel(networks, CLASSES, {"members": entries(members)})
    fp32_cpu = Compute(torch.device("cpu"))
    for batch in (drawings[:1], drawings):
        expected = torch_model.probabilities(batch, fp32_cpu)
        got = portable.probabilities(batch)
        assert got.shape == (len(batch), len(CLASSES)) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert (expected.argmax(1) == np.arange(len(drawings)) // 167).mean() > 0.3  # trained: far above chance (1/6)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)


def test_the_graph_describes_itself_in_its_metadata(drawings):
    data = onnx_model(networks_of(MEMBERS["seed"], drawings), entries(MEMBERS["seed"]), CLASSES)
    session = onnxruntime.InferenceSession(data)
    metadata = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    assert metadata == json.loads(json.dumps(model_card(CLASSES)))
    assert metadata["classes"] == CLASSES and "white (255) on black (0)" in metadata["input"]["convention"]
    [given], [taken] = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == (INPUT_NAME, "tensor(uint8)", [28, 28])
    assert (taken.name, taken.type, taken.shape[1]) == (OUTPUT_NAME, "tensor(float)", len(CLASSES))
    assert isinstance(given.shape[0], str) and given.shape[0] == taken.shape[0]  # one dynamic batch size


def test_safetensors_hold_the_state_dict(drawings):
    from safetensors.torch import load

    network = networks_of(MEMBERS["vgg-bn"], drawings)[0]
    loaded = load(safetensors_weights(network.state_dict()))
    assert loaded.keys() == network.state_dict().keys()
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_not_a_model_is_refused_in_one_line():
    with pytest.raises(ValueError, match="not a model.onnx that this package exports"):
        PortableModel.from_bytes(b"not an onnx graph")


BLOCK_TORCH = """
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "quickdraw"):
            raise ImportError(f"{name} imported by the script")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["classify.py", *sys.argv[1:]]
runpy.run_path("classify.py", run_name="__main__")
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "quickdraw")))
"""


def test_the_documented_script_classifies_a_png_with_onnxruntime_alone(tmp_path, drawings):
    script = DOCS_SCRIPT.search((REPO / "docs" / "models.md").read_text())["code"]
    (tmp_path / "classify.py").write_text(script)
    data = onnx_model(networks_of(MEMBERS["ensemble"], drawings), entries(MEMBERS["ensemble"]), CLASSES)
    (tmp_path / "model.onnx").write_bytes(data)
    drawing = drawings[500]
    Image.fromarray(255 - drawing).save(tmp_path / "drawing.png")  # as `convert --png` writes a drawing
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "model.onnx", "drawing.png"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    *lines, imported = result.stdout.strip().splitlines()
    assert imported == "imported: []"
    probabilities = PortableModel.from_bytes(data).probabilities(drawing[np.newaxis])[0]
    assert lines == [f"{CLASSES[i]} {100 * probabilities[i]:.2f}%" for i in probabilities.argsort()[::-1][:3]]
