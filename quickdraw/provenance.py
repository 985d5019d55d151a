"""What a search ran on, recorded in search.json's "run" when it starts, for the report to show: the command line,
the date, the code's git commit, the versions of the packages that train and search, and the hardware."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "ray", "tensorboard", "optuna", "numpy", "pandas")
CODE = Path(__file__).resolve().parents[1]  # the checkout the package runs from


def run_record(cluster: dict, nodes: int) -> dict:
    """The run's record; `cluster` is Ray's cluster resources, `nodes` how many nodes are alive."""
    return {
        "command": shlex.join(["python", *sys.argv]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "packages": {"python": platform.python_version(), **{name: version(name) for name in PACKAGES}},
        "hardware": hardware(cluster, nodes),
    }


def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, "+ changes" when its tracked files differ; None outside git."""
    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head} + changes" if changed else head


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(CODE), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def hardware(cluster: dict, nodes: int) -> dict:
    """The cluster's nodes, CPUs and GPUs (with their kinds, as Ray labels them) and the driver's machine."""
    kinds = sorted(key.split(":", 1)[1] for key in cluster if key.startswith("accelerator_type:"))
    return {"nodes": nodes, "cpus": cluster.get("CPU", 0), "gpus": cluster.get("GPU", 0), "gpu_kinds": kinds,
            "driver": f"{platform.node()} ({platform.platform()})"}
