"""What the benchmarks share: the real drawings they run on, the machine they ran on, and how results are kept."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python benchmarks/<name>.py` from anywhere imports this checkout's package

DEFAULT_DATA = Path(os.environ.get("QUICKDRAW_DATA", REPO.parent / "shared" / "quickdraw"))
REAL_CLASSES = "apple,bicycle,cat,diamond,eye,fish"  # the six classes in ../shared/quickdraw
SEED_SPLIT = "12000,2400,600"  # the seed's 2,000 / 400 / 100 drawings per class, for six classes
RESULTS = REPO / "benchmarks" / "results"


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def add_data_flags(parser: argparse.ArgumentParser, name: str) -> None:
    """The real drawings to run on, and where the figures go (benchmarks/results/<name>.json)."""
    from quickdraw.cli import name_list, split_sizes

    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="default: ../shared/quickdraw or $QUICKDRAW_DATA")
    parser.add_argument("--classes", type=name_list, default=name_list(REAL_CLASSES))
    parser.add_argument("--split", type=split_sizes, default=split_sizes(SEED_SPLIT), help=f"default {SEED_SPLIT}")
    parser.add_argument("--output", type=Path, default=RESULTS / f"{name}.json", help="default %(default)s")


def save(path: Path, rows: list[dict], table: pd.DataFrame, title: str, floatfmt=".2f") -> None:
    """Print the table under a line naming the machine, and write the rows to `path` as JSON."""
    print(f"\n{title}\n{machine()}\n")
    print(table.to_markdown(index=False, floatfmt=floatfmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten to {path}")


def spread(values: pd.Series, fmt: str = "{:.2f}") -> str:
    """The mean of the repeats, and their range in brackets."""
    return f"{fmt.format(values.mean())} [{fmt.format(values.min())}-{fmt.format(values.max())}]"
