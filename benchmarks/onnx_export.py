"""What writing best_model/model.onnx costs at the end of a search or a report: torch's TorchScript exporter, which
quickdraw.onnx_export uses, against torch's default dynamo exporter, for the smallest best model and the largest
ensemble `--ensemble 10` can make (ten vgg-bn networks, each with its mirrored view). Each export runs in a process of
its own, as in a driver: the seconds to import the exporter's modules and to export, and how far onnxruntime's
probabilities on real drawings are from torch's. The networks are untrained: time does not depend on the weights.

    python benchmarks/onnx_export.py [--repeats 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common import DEFAULT_DATA, RESULTS, save

CASES = {"seed": ("seed", 1, False), "10 x vgg-bn, mirrored": ("vgg-bn", 10, True)}
EXPORTERS = ("torchscript", "dynamo")  # ours, torch's default


def main(args: argparse.Namespace) -> None:
    rows = [{"model": case, "exporter": exporter, "repeat": repeat, **exported(exporter, case, args.data_dir)}
            for repeat in range(args.repeats) for case in args.models for exporter in EXPORTERS]
    save(args.output, rows, table(pd.DataFrame(rows)), "model.onnx: each exporter in a fresh process", floatfmt=".3g")


def exported(exporter: str, case: str, data_dir: Path) -> dict:
    """One export in a process of its own (this script with --child), and what it measured."""
    child = [sys.executable, __file__, "--child", exporter, case, "--data-dir", str(data_dir)]
    result = subprocess.run(child, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model, each exporter's mean seconds (imports and export, then export alone) and largest difference."""
    rows = rows.assign(total_seconds=rows.import_seconds + rows.export_seconds)
    grouped = rows.groupby(["model", "exporter"], sort=False).agg(
        total_seconds=("total_seconds", "mean"), export_seconds=("export_seconds", "mean"),
        max_difference=("max_difference", "max"))
    out = []
    for case in rows.model.unique():
        ours, theirs = grouped.loc[(case, "torchscript")], grouped.loc[(case, "dynamo")]
        out.append({"model": case, "import + export s, ours (a)": ours.total_seconds,
                    "import + export s, dynamo (b)": theirs.total_seconds,
                    "b / a": theirs.total_seconds / ours.total_seconds,
                    "export s, ours": ours.export_seconds, "export s, dynamo": theirs.export_seconds,
                    "max abs(onnxruntime - torch), ours": ours.max_difference, "same, dynamo": theirs.max_difference})
    return pd.DataFrame(out)


def child(exporter: str, case: str, data_dir: Path) -> None:
    """Import, export and check one model; print what it measured as one JSON line."""
    started = time.perf_counter()
    import onnxruntime
    import torch

    from quickdraw.model import MODELS
    from quickdraw.onnx_export import WholeModel, onnx_model
    from quickdraw.portable import INPUT_NAME

    imported = time.perf_counter()
    model, count, mirrored = CASES[case]
    torch.manual_seed(0)
    networks = [MODELS[model].build(6, 0.5).eval() for _ in range(count)]
    members = [{"weight": 1 / count, "mirrored": mirrored}] * count
    whole = WholeModel(networks, members).eval()  # what onnx_model exports, and torch's reference
    export_started = time.perf_counter()
    graph = onnx_model(networks, members, ["class"] * 6) if exporter == "torchscript" else dynamo(whole)
    export_seconds = time.perf_counter() - export_started
    bitmaps = np.load(data_dir / "cat.npy")[:256].reshape(-1, 28, 28)
    theirs = onnxruntime.InferenceSession(graph).run(None, {INPUT_NAME: bitmaps})[0]
    with torch.no_grad():
        ours = whole(torch.from_numpy(bitmaps)).numpy()
    print(json.dumps({"import_seconds": imported - started, "export_seconds": export_seconds,
                      "max_difference": float(np.abs(theirs - ours).max())}))


def dynamo(whole) -> bytes:
    """The same model through torch's default exporter, as quickdraw.onnx_export used it before."""
    import torch

    from quickdraw.portable import INPUT_NAME, OUTPUT_NAME

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(whole, (torch.zeros((2, 28, 28), dtype=torch.uint8),), dynamo=True,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    return program.model_proto.SerializeToString()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="exports of each model by each exporter")
    parser.add_argument("--models", type=lambda text: text.split(","), default=list(CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="cat.npy's first drawings are checked")
    parser.add_argument("--output", type=Path, default=RESULTS / "onnx_export.json", help="default %(default)s")
    parser.add_argument("--child", nargs=2, metavar=("EXPORTER", "MODEL"), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        child(*arguments.child, arguments.data_dir)
    else:
        main(arguments)
