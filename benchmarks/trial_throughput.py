"""Training images per second of one trial, per batch size, measured in one run on one machine:

  (a) ceiling         the same model with the same compute settings (precision, channels_last, compile, threads),
                      forward, backward and step on float tensors already in memory, in a tight loop;
  (b) trial           our trial's training loop (quickdraw.training.train_epoch) on the uint8 split, viewed where a
                      trial finds it: in Ray's object store (read-only shared memory, not copied);
  (c) seed pipeline   the seed's way: PNG files decoded per drawing by PIL into 3-channel tensors, a torch
                      DataLoader, the same CNN in fp32 (0 loader workers by default: a trial has one CPU).

    python benchmarks/trial_throughput.py [--data-dir ../shared/quickdraw] [--batch-sizes 32,64,128,256,512]

Prints b/a and b/c per batch size and writes benchmarks/results/trial_throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts this checkout's package on the path)
import numpy as np
import pandas as pd
import ray
import torch
import torch.nn.functional as F
from PIL import Image

from quickdraw.bitmaps import find_class_files
from quickdraw.cli import int_list
from quickdraw.compute import Compute, choose
from quickdraw.config import DataConfig
from quickdraw.dataset import split_drawings, write_pngs
from quickdraw.model import SeedCNN
from quickdraw.storage import Location
from quickdraw.training import Training, to_device, train_epoch


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    config = DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split)
    split = split_drawings(config, find_class_files(config.data_dir, config.classes))
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    split = ray.get(ray.put(split))  # as a trial gets it: arrays in the object store's shared memory
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compute = choose(device, args.precision, args.compile)
    drawings, labels = to_device(split.part("train"), device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pngs = Path(write_pngs(split, Location.parse(tmp)).path) / "train"
        classes = len(split.classes)
        for size in args.batch_sizes:
            rows.append({"batch_size": size, **interleaved_medians(args.repeats, {
                "ceiling_ips": lambda: ceiling_ips(compute, drawings, labels, size, classes),
                "trial_ips": lambda: trial_ips(compute, drawings, labels, size, classes),
                "seed_pipeline_ips": lambda: seed_pipeline_ips(pngs, device, size, classes, len(labels), args.loader_workers),
            })})
            print(rows[-1], flush=True)
    settings = f"{compute.device.type}, {'bf16' if compute.bf16 else 'fp32'}, channels_last, " \
               f"{'compiled' if compute.compile else 'eager'}, {args.threads} thread(s)"
    common.save(args.output, rows, ratio_table(rows),
                f"Training images/s of one trial, {len(labels)} drawings an epoch, median of {args.repeats} ({settings})",
                floatfmt=(".0f",) * 4 + (".2f",) * 2)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_data_flags(parser, "trial_throughput")
    parser.add_argument("--batch-sizes", type=int_list, default=(32, 64, 128, 256, 512))
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="as the run's flag")
    parser.add_argument("--compile", action="store_true", help="as the run's flag")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a trial with that many CPUs (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="epochs measured per figure, after one to warm up; the median counts")
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers of the seed pipeline")
    return parser.parse_args()


def interleaved_medians(repeats: int, measures: dict) -> dict:
    """The median of each measure over `repeats` rounds of all of them in turn, so that a slower or faster
    spell of the machine touches every one alike; a first round warms up (allocator, oneDNN, compilation)."""
    figures = {name: [] for name in measures}
    for round_ in range(repeats + 1):
        for name, measure in measures.items():
            value = measure()
            if round_:
                figures[name].append(value)
    return {name: statistics.median(values) for name, values in figures.items()}


def timed(step_all) -> float:
    """Seconds that `step_all` takes, with the device's queue drained before and after."""
    synchronize()
    started = time.perf_counter()
    step_all()
    synchronize()
    return time.perf_counter() - started


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def new_model(compute: Compute, num_classes: int):
    model = SeedCNN(num_classes)
    return compute.prepare(model), torch.optim.Adam(model.parameters(), lr=1e-3)


def ceiling_ips(compute: Compute, drawings, labels, batch_size: int, num_classes: int) -> float:
    network, optimizer = new_model(compute, num_classes)
    inputs = compute.inputs(drawings)  # all floats up front, in the model's layout
    batches = [(inputs[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)]
    network.train()

    def epoch():
        for x, y in batches:
            with compute.autocast():
                loss = F.cross_entropy(network(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return len(labels) / timed(epoch)


def trial_ips(compute: Compute, drawings, labels, batch_size: int, num_classes: int) -> float:
    network, optimizer = new_model(compute, num_classes)
    return len(labels) / timed(lambda: train_epoch(network, Training(optimizer), drawings, labels, batch_size, compute))


class PngFolder(torch.utils.data.Dataset):
    """The seed's input: `<Class>/<n>.png` files, each opened by PIL as RGB and scaled to [0, 1]."""

    def __init__(self, root: Path):
        classes = sorted(p.name for p in root.iterdir())
        self.items = [(path, label) for label, name in enumerate(classes) for path in sorted((root / name).glob("*.png"))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(image).permute(2, 0, 1), label


def seed_pipeline_ips(pngs: Path, device, batch_size: int, num_classes: int, count: int, workers: int) -> float:
    model = SeedCNN(num_classes, in_channels=3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PngFolder(pngs), batch_size=batch_size, shuffle=True, num_workers=workers)
    model.train()

    def epoch():
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return count / timed(epoch)


def ratio_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table["trial / ceiling (b/a)"] = table.trial_ips / table.ceiling_ips
    table["trial / seed (b/c)"] = table.trial_ips / table.seed_pipeline_ips
    return table


if __name__ == "__main__":
    main()
