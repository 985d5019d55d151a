"""Memory against the split's size and the number of trials at once: each case runs `python tune_search.py` as a
user would, on the real drawings tiled to the size, and samples the memory of the driver and every process it
starts (Ray's gcs_server, raylet, dashboard, agents, the converter and the trial workers) from
/proc/<pid>/smaps_rollup every quarter second. The goal (issue 16): memory ~ split + trials x a constant, not
trials x split, i.e. each trial beyond the first adds at most 0.6 GB whatever the split's size; and (issue 28) a
trial's own memory bounded by its evaluation batch, not growing with the validation and test sets.

    python benchmarks/memory_scaling.py [--data-dir ../shared/quickdraw] [--sizes 25000,250000,900000] [--trials 1,2,4]
    python benchmarks/memory_scaling.py --splits 60000,20000,20000 60000,420000,420000 --trials 1 --batch-size 512

Per size, the class files are tiled (their rows repeated) to the size / classes drawings each, and
`tune_search.py convert` is timed alone (conversion seconds); every case then reuses that stored split and runs
one epoch of k trials (k learning rates, batch 256 or --batch-size) with --cpus-per-trial cores / k, so that all k
run at once on this machine's cores (two on the project's machine). --splits gives the splits themselves instead,
e.g. one training part with small and with large validation and test parts. Per case:

- peak PSS: the highest sum of Pss over the driver's process tree (shared pages divided among their processes);
- object store: the sum of Pss_Shmem at that peak (Ray's object store is a deleted /dev/shm/plasma* file mapped by
  the raylet, the converter and the trials; a page counts in the processes that touched it);
- per-trial own: the highest Pss_Anon (private memory: Python, torch, the trial's own tensors) of a trial worker,
  the process titled `ray::ImplicitFunc...`, and trial PSS, its highest Pss (its own and its share of the object
  store's pages that it reads);
- added per validation or test drawing: (trial's own - that of the case with the same training part and trials
  and the fewest validation and test drawings) / the difference in validation and test drawings, in bytes, against
  the 784 bytes of a drawing's pixels;
- added per extra trial: (peak PSS - the 1-trial case's peak PSS of the same size) / (k - 1), and its ratio to the
  split's size: about 1 when every trial copies the split, about 0 when the trials share it;
- images/s: the mean of the trials' `images_per_second` (one epoch each), from their result.json files.

Writes benchmarks/results/memory_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import common
import numpy as np
import pandas as pd

from quickdraw.bitmaps import find_class_files
from quickdraw.cli import int_list, split_sizes
from quickdraw.config import SplitSizes

SIZES = "25000,250000,900000"
TRIALS = "1,2,4"
BATCH_SIZE = 256
CPUS = os.cpu_count() or 1  # this machine's cores, shared by the trials of a case
# Training stays small so that a case takes about a minute; validation and test take the rest of the size.
SPLITS = {25_000: SplitSizes(15_000, 5_000, 5_000), 250_000: SplitSizes(30_000, 110_000, 110_000),
          900_000: SplitSizes(60_000, 420_000, 420_000)}
TRIAL_TITLE = "ray::ImplicitFunc"  # what Ray titles the worker of a Tune function trainable (train_trial)
SAMPLE_S = 0.25
CASE_TIMEOUT_S = 1800
FIELDS = ("Pss", "Pss_Anon", "Pss_Shmem", "Pss_File")


def main() -> None:
    args = parse_args()
    rows = []
    for split in args.splits:
        with tempfile.TemporaryDirectory(prefix="qdmem-") as work:
            data = tile_class_files(args.data_dir, args.classes, split, Path(work) / "data")
            storage = Path(work) / "storage"
            flags = ["--data-dir", data, "--classes", ",".join(args.classes), "--split", joined(split),
                     "--storage", storage, "--no-download"]
            conversion = convert(flags)
            split_bytes = stored_split_bytes(storage)
            drawings = sum(split_counts(split))
            for trials in args.trials:
                case = run_case(flags, trials, storage, args.batch_size)
                rows.append({"drawings": drawings, "trials": trials, "split": list(split_counts(split)),
                             "batch_size": args.batch_size, "split_bytes": split_bytes,
                             "conversion_seconds": conversion, **case})
                print(f"split {joined(split)}, {trials} trial(s): peak PSS {case['peak_pss_bytes'] / 1e9:.2f} GB, "
                      f"trial {case['trial_pss_bytes'] / 1e9:.2f} GB", flush=True)
    add_extra_trial_cost(rows)
    add_evaluated_drawing_cost(rows)
    common.save(args.output, rows, table(rows),
                f"Memory of one epoch of k trials at once (--cpus-per-trial {CPUS}/k, batch {args.batch_size}), by "
                f"split; peak PSS summed over the driver and every Ray process",
                floatfmt=(".0f", "", ".0f", ".1f", ".2f", ".2f", ".2f", ".2f", ".0f", ".2f", ".2f", ".1f", ".0f"))


def split_for(size: int) -> SplitSizes:
    """The issue's splits for its three sizes; 60 / 20 / 20 for any other."""
    if size in SPLITS:
        return SPLITS[size]
    train, validation = size * 3 // 5, size // 5
    return SplitSizes(train, validation, size - train - validation)


def split_counts(split: SplitSizes) -> tuple[int, int, int]:
    return split.train, split.validation, split.test


def joined(split: SplitSizes) -> str:
    return ",".join(map(str, split_counts(split)))


def tile_class_files(source: Path, classes: tuple[str, ...], split: SplitSizes, target: Path) -> Path:
    """`<class>.npy` files in `target` holding the rows of the real ones repeated, as many as the split takes of a
    class (remainders go to the first classes, so all get the first class's count)."""
    target.mkdir(parents=True)
    rows = max(map(sum, split.per_class(len(classes))))
    for bitmaps in find_class_files(source, classes):
        drawings = np.load(bitmaps.path, mmap_mode="r")
        np.save(target / f"{bitmaps.class_name}.npy", np.resize(np.asarray(drawings), (rows, *drawings.shape[1:])))
    return target


def convert(flags: list) -> float:
    """Seconds of `tune_search.py convert` (a fresh interpreter, as a user runs it)."""
    started = time.perf_counter()
    command([sys.executable, "tune_search.py", "convert", *flags], timeout=CASE_TIMEOUT_S)
    return time.perf_counter() - started


def command(argv: list, **kwargs) -> None:
    result = subprocess.run(list(map(str, argv)), cwd=common.REPO, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed ({result.returncode}):\n"
                 f"{result.stdout[-2000:]}{result.stderr[-3000:]}")


def stored_split_bytes(storage: Path) -> int:
    """Bytes of the stored split's arrays (drawings and labels), from the headers in split.npz."""
    (arrays,) = storage.glob("datasets/*/split.npz")
    total = 0
    with zipfile.ZipFile(arrays) as npz:
        for name in npz.namelist():
            with npz.open(name) as f:
                version = np.lib.format.read_magic(f)
                shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)(f)
                total += int(np.prod(shape)) * dtype.itemsize
    return total


def run_case(flags: list, trials: int, storage: Path, batch_size: int) -> dict:
    """One search of `trials` trials at once, its process tree sampled until it exits."""
    name = f"trials-{trials}"
    lrs = ",".join(f"{0.001 * (i + 1):g}" for i in range(trials))
    argv = [sys.executable, "tune_search.py", *flags, "--name", name, "--epochs", "1", "--batch-sizes", batch_size,
            "--lrs", lrs, "--cpus-per-trial", f"{CPUS / trials:g}"]
    ray_tmp = tempfile.mkdtemp(prefix="qdmem-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    log = storage / f"{name}.log"
    seen: dict[int, int] = {}  # every process of the tree: pid -> start time, to end leftovers and only those
    peak = dict.fromkeys(FIELDS, 0)
    trial_own = trial_pss = trials_at_once = shared = 0
    started = time.perf_counter()
    try:
        with open(log, "w") as out:
            driver = subprocess.Popen(list(map(str, argv)), cwd=common.REPO, stdout=out, stderr=subprocess.STDOUT,
                                      env={**os.environ, "RAY_TMPDIR": ray_tmp})
            while True:
                done = driver.poll() is not None
                sample = [(pid, rollup(pid)) for pid in tree(driver.pid, seen)]
                sample = [(pid, memory) for pid, memory in sample if memory]
                total = {key: sum(memory.get(key, 0) for _, memory in sample) for key in FIELDS}
                if total["Pss"] > peak["Pss"]:
                    peak = total
                # The object store's pages, at their own peak: at the moment of the peak PSS a small split's pages may
                # not all be mapped yet.
                shared = max(shared, total["Pss_Shmem"])
                workers = [memory for pid, memory in sample if title(pid).startswith(TRIAL_TITLE)]
                trials_at_once = max(trials_at_once, len(workers))
                trial_own = max([trial_own, *(memory.get("Pss_Anon", 0) for memory in workers)])
                trial_pss = max([trial_pss, *(memory["Pss"] for memory in workers)])
                if done:
                    break
                time.sleep(SAMPLE_S)
            wall = time.perf_counter() - started
            driver.wait(timeout=CASE_TIMEOUT_S)
        if driver.returncode != 0:
            sys.exit(f"{' '.join(map(str, argv))} failed ({driver.returncode}):\n{log.read_text()[-4000:]}")
    finally:
        end_leftovers(seen, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {
        "peak_pss_bytes": peak["Pss"], "object_store_bytes": shared, "peak_pss_anon_bytes": peak["Pss_Anon"],
        "peak_pss_file_bytes": peak["Pss_File"], "trial_own_bytes": trial_own, "trial_pss_bytes": trial_pss,
        "trials_at_once": trials_at_once, "images_per_second": images_per_second(storage / name),
        "wall_seconds": wall,
    }


def tree(root: int, seen: dict[int, int]) -> list[int]:
    """`root` and all its descendants now (Ray's workers are the raylet's children), noted in `seen`."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = proc_stat(int(pid))
        if stat:
            children.setdefault(stat[0], []).append(int(pid))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        stat = proc_stat(pid)
        if stat is None:
            continue
        seen.setdefault(pid, stat[1])
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])  # the fields after the name start at the state, /proc/pid/stat's 3rd


def rollup(pid: int) -> dict[str, int]:
    """The process's Pss, Pss_Anon, Pss_Shmem and Pss_File in bytes ({} once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    memory = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in FIELDS:
            memory[key] = int(value.split()[0]) * 1024  # kB
    return memory


def title(pid: int) -> str:
    """The process's command line: Ray workers retitle theirs, e.g. `ray::ImplicitFunc.train`, `ray::IDLE`."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def end_leftovers(seen: dict[int, int], ray_tmp: str) -> None:
    """SIGKILL what is left of the case's processes: the ones sampled (when still the same process), and any whose
    command line names the case's Ray temp dir. Never `ray stop`, which ends every Ray of the machine."""
    leftovers = {pid for pid, start in seen.items() if (stat := proc_stat(pid)) and stat[1] == start}
    leftovers |= {int(pid) for pid in filter(str.isdigit, os.listdir("/proc")) if ray_tmp in title(int(pid))}
    for pid in leftovers - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def images_per_second(experiment: Path) -> float:
    """Mean training images per second over every epoch of every trial of the search."""
    speeds = [json.loads(line)["images_per_second"]
              for result in experiment.glob("lr=*/result.json") for line in result.read_text().splitlines() if line]
    return float(np.mean(speeds)) if speeds else float("nan")


def add_extra_trial_cost(rows: list[dict]) -> None:
    """What each trial beyond the first adds to the peak, against the 1-trial case of the same split."""
    single = {tuple(row["split"]): row["peak_pss_bytes"] for row in rows if row["trials"] == 1}
    for row in rows:
        added = None
        if row["trials"] > 1 and tuple(row["split"]) in single:
            added = (row["peak_pss_bytes"] - single[tuple(row["split"])]) / (row["trials"] - 1)
        row["added_per_extra_trial_bytes"] = added
        row["added_per_extra_trial_over_split"] = None if added is None else added / row["split_bytes"]


def evaluated(row: dict) -> int:
    """The case's validation and test drawings."""
    return sum(row["split"][1:])


def add_evaluated_drawing_cost(rows: list[dict]) -> None:
    """What each validation or test drawing adds to a trial's own memory, against the case of the same training part
    and trials with the fewest validation and test drawings (none for that case itself)."""
    for row in rows:
        alike = [other for other in rows if other["split"][0] == row["split"][0] and other["trials"] == row["trials"]]
        smallest = min(alike, key=evaluated)
        extra = evaluated(row) - evaluated(smallest)
        row["trial_own_added_per_evaluated_drawing_bytes"] = (
            (row["trial_own_bytes"] - smallest["trial_own_bytes"]) / extra if extra else None)


def table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    gb = 1e9
    return pd.DataFrame({
        "drawings": frame.drawings, "split": frame.split.map(lambda counts: "/".join(map(str, counts))),
        "trials": frame.trials, "split MB": frame.split_bytes / 1e6,
        "peak PSS GB": frame.peak_pss_bytes / gb, "object store GB": frame.object_store_bytes / gb,
        "per-trial own GB": frame.trial_own_bytes / gb, "trial PSS GB": frame.trial_pss_bytes / gb,
        "own B per val/test drawing": frame.trial_own_added_per_evaluated_drawing_bytes.astype(float),
        "added per extra trial GB": frame.added_per_extra_trial_bytes.astype(float) / gb,
        "added / split": frame.added_per_extra_trial_over_split.astype(float),
        "conversion s": frame.conversion_seconds, "images/s": frame.images_per_second,
    })


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_data_flags(parser, "memory_scaling")
    parser.set_defaults(split=None)
    next(action for action in parser._actions if action.dest == "split").help = (
        "with a single --sizes, the split to use instead of the size's own (default: "
        + "; ".join(f"{size}: {joined(split)}" for size, split in SPLITS.items()) + "; 60/20/20 for other sizes)")
    parser.add_argument("--sizes", type=int_list, default=int_list(SIZES),
                        help=f"drawings in the split (default {SIZES})")
    parser.add_argument("--splits", type=split_sizes, nargs="+", metavar="TRAIN,VALIDATION,TEST",
                        help="the splits to run instead of --sizes, e.g. 60000,20000,20000 60000,420000,420000")
    parser.add_argument("--trials", type=int_list, default=int_list(TRIALS),
                        help=f"trials at once, each with {CPUS}/k CPUs (default {TRIALS})")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="default %(default)s")
    args = parser.parse_args()
    if args.split is not None and (len(args.sizes) != 1 or sum(split_counts(args.split)) != args.sizes[0]):
        parser.error("--split goes with a single --sizes equal to its total")
    if args.splits and args.split is not None:
        parser.error("give --splits or --split, not both")
    if any(k < 1 for k in args.trials):
        parser.error("--trials must be 1 or more")
    args.splits = args.splits or [args.split or split_for(size) for size in args.sizes]
    return args


if __name__ == "__main__":
    main()
