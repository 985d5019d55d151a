"""What a trial's --precision resolved to, recorded where users look: search.json, best_model/config.json, the report
page, and `predict`, which says in what it predicts. The trials' device detection is patched (a Ray worker setup hook)
to claim a GPU that computes bf16 natively, so that `auto` resolves to bf16 whatever CPU runs the test, on a device
name no real run gives."""

from __future__ import annotations

import json
import sys

import pytest
import ray

from conftest import REPO, SYNTHETIC_CLASSES, write_class_files
from quickdraw import compute
from quickdraw.best_model import BestModel
from quickdraw.config import DataConfig, SearchConfig, SplitSizes
from quickdraw.predict import predict
from quickdraw.report import write_report
from quickdraw.search import run_search
from quickdraw.space import space_with
from quickdraw.storage import Location

pytestmark = pytest.mark.slow  # a real search


GPU = "cuda (a pretend bf16 GPU)"


def claim_native_bf16() -> None:
    if str(REPO) not in sys.path:  # the hook runs before Ray gives the worker the driver's path
        sys.path.insert(0, str(REPO))
    from quickdraw import compute

    compute.has_native_bf16 = lambda device: True
    compute.Compute.device_name = lambda self: GPU  # and the device's name: what no CPU run reports by itself


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Location:
    root = tmp_path_factory.mktemp("precision")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook runs in workers that cannot import tests/
    ray.init(address="local", num_cpus=2, runtime_env={"worker_process_setup_hook": claim_native_bf16},
             logging_level="WARNING")
    try:
        config = SearchConfig(
            data=DataConfig(data_dir=write_class_files(root / "data"), classes=SYNTHETIC_CLASSES,
                            split=SplitSizes(60, 15, 15)),
            space=space_with(lr=(0.01, 0.001), batch_size=(16,)), epochs=1, storage=str(root / "results"), name="auto",
        )
        folder = run_search(config)
    finally:
        ray.shutdown()
    write_report(folder)
    return folder


def test_what_auto_resolved_to_is_recorded(experiment):
    record = json.loads((experiment / "search.json").read_text())
    assert record["config"]["precision"] == "auto"  # what was asked
    assert record["ran"] == {f"bf16 on {GPU}": 2}  # what ran
    config = json.loads((experiment / "best_model" / "config.json").read_text())
    assert (config["precision"], config["precision_asked"], config["device"]) == ("bf16", "auto", GPU)
    page = (experiment / "report.html").read_text()
    assert f"<dt>Ran in</dt><dd>bf16 on {GPU} (2 trials)</dd>" in page
    assert "--precision auto" in page


@pytest.mark.parametrize("native", [True, False])
def test_predict_says_in_what_it_predicts(experiment, tmp_path, monkeypatch, capsys, native):
    import numpy as np

    monkeypatch.setattr(compute, "has_native_bf16", lambda device: native)
    monkeypatch.setattr("quickdraw.best_model.has_native_bf16", lambda device: native)
    drawings = tmp_path / "drawings.npy"
    np.save(drawings, np.zeros((2, 28, 28), dtype=np.uint8))
    lines = predict(experiment, [drawings], top=1)
    assert len(lines) == 2
    used = "bf16" if native else "fp32"  # bf16 only where the hardware computes it natively
    assert capsys.readouterr().err == f"predicting in {used} on cpu; the model trained in bf16 on {GPU}\n"
    assert BestModel.load(experiment).compute().precision == used
