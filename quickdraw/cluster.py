"""Ray: started on this machine or joined at an address, the split converted once per cluster and kept in its object
store, and each trial's share of the nodes' CPUs and GPUs."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import tempfile
from pathlib import Path

import ray
from ray.exceptions import AuthenticationError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import quickdraw
from quickdraw.config import DataConfig, SearchConfig
from quickdraw.dataset import Conversion, conversion_fingerprint, prepare_split
from quickdraw.errors import UserError
from quickdraw.storage import Location, first_line

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
CONNECT_TIMEOUT_S = 5
CONVERT_ATTEMPTS = 3
THIS_MACHINE = "this machine"  # the nodes of a Ray started here, in errors
# Converters this driver used. Ray ends an actor as soon as no handle to it is left, which would fail
# another driver's call queued on it; holding them until this driver exits keeps that to the rare case.
_converters: list = []


TUNE_SETTINGS = {
    # Trials write their own TensorBoard logs; Ray's TensorBoardX logger would add a second set.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Keeping one checkpoint per trial makes Tune snapshot its experiment state at every checkpoint, on purpose, so
    # that a restore never points at a deleted checkpoint; without this it warns each time.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # A diverged trial's last result holds neither its validation loss (ASHA's metric) nor, before a first finite
    # one, a best validation accuracy (Optuna's): both would be NaN (quickdraw.trainable). Tune's strict check
    # would end the whole search on it; ASHA passes such a result by, and quickdraw.tuner's Optuna marks it pruned.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


@contextlib.contextmanager
def ray_session(address: str | None):
    """Ray for a search: a local Ray started here, or the cluster at `address` (or RAY_ADDRESS's) joined with this
    package shipped to it, and shut down at the end; a Ray its caller started is used as it is. Ray Tune's settings
    (TUNE_SETTINGS, and two of its log lines left out: `unhelpful`) hold for the session, and are undone after it
    for callers in this process."""
    with environment(TUNE_SETTINGS), without_unhelpful_lines():
        if ray.is_initialized():
            yield
            return
        connect(address)
        try:
            yield
        finally:
            ray.shutdown()  # prints the trials' last log lines now, before the summary


@contextlib.contextmanager
def environment(settings: dict[str, str]):
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unhelpful(record: logging.LogRecord) -> bool:
    """Three of Ray's log lines that mislead here or say nothing new: the note on every start of a local Ray that token
    authentication is on (its secure default, and a line before any one-line error of ours); Tune's "Resume
    experiment with: Tuner.restore(...)" on Ctrl-C (`resume` is the command that goes on, and the command line names
    it); and Tune's "Failed to fetch metrics" when every trial it names merely has no results yet (one that never
    started, after Ctrl-C or at a resume: the summary shows it as unfinished). Other failures to read results show."""
    message = record.getMessage()
    if message.startswith(("Token authentication is enabled for this Ray cluster", "Experiment has been interrupted")):
        return True
    return message.startswith("Failed to fetch metrics") and all(
        "FileNotFoundError" in line for line in message.splitlines()[1:])


def shorten_storage_error(record: logging.LogRecord) -> None:
    """Tune logs each failed copy to or from storage with pyarrow's traceback, whose last line says all there is (the
    command then ends with one line on what to do): the record keeps that line only."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, OSError) and record.name.startswith(("ray.tune", "ray.train")):
        record.msg, record.args = f"{record.getMessage().rstrip()} {first_line(error)}", None
        record.exc_info = record.exc_text = None


@contextlib.contextmanager
def without_unhelpful_lines():
    """`unhelpful` lines left out, and storage errors shortened, where Ray prints its log: the handlers of its top
    logger, which every Ray and Tune logger passes its records to."""
    def keep(record: logging.LogRecord) -> bool:
        if unhelpful(record):
            return False
        shorten_storage_error(record)
        return True

    handlers = logging.getLogger("ray").handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def connect(address: str | None) -> None:
    address, named, instead = chosen_address(address)
    if address in (None, "local"):
        start_local_ray()
        return
    if address == "auto" and (remembered := remembered_cluster()):
        # Ray joins the cluster `ray start` last started here, and would retry it for minutes once it has stopped.
        named = f"--address auto ({remembered[0]} names {remembered[1]}, the cluster `ray start` last started here)"
        check_reachable(remembered[1], named, instead)
    elif address != "auto":
        check_reachable(address, named, instead)
    runtime_env = {
        "py_modules": [str(Path(quickdraw.__file__).parent)],
        "env_vars": {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ},
    }
    try:
        ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env)
    except AuthenticationError:
        raise UserError(
            f"{named}: the cluster wants its token: export RAY_AUTH_MODE=token and put the "
            "head node's ~/.ray/auth_token in the same place here (or in RAY_AUTH_TOKEN)"
        ) from None
    except ConnectionError as e:
        raise UserError(
            f"{named}: could not join a Ray cluster ({first_line(e)}); start one with "
            "`ray start --head`, export RAY_AUTH_MODE=token if it uses token authentication, "
            f"or {instead} to run on this machine"
        ) from None


def chosen_address(address: str | None) -> tuple[str | None, str, str]:
    """The address Ray is asked for (None or "local": a Ray of this machine's own), how errors name it and how to do
    without it. ray.init() takes RAY_ADDRESS over no address and over "auto", and so does the command: it is checked
    and named as --address is, as Ray would retry a dead one for minutes."""
    environment = os.environ.get("RAY_ADDRESS")
    if environment and address in (None, "auto"):
        return environment, f"RAY_ADDRESS={environment}", "unset RAY_ADDRESS"
    return address, f"--address {address}", "leave out --address"


def runs_here(address: str | None) -> bool:
    """Whether the search runs in a Ray of its own on this machine, whatever other Rays run here."""
    return chosen_address(address)[0] in (None, "local")


def starts_ray_here(address: str | None) -> bool:
    """Whether `ray_session` will start a Ray on this machine (not use one its caller started)."""
    return runs_here(address) and not ray.is_initialized()


def remembered_cluster() -> tuple[Path, str] | None:
    """The file in which `ray start` leaves the address of the cluster it started, and that address, which
    ray.init(address="auto") joins (ray.init's documentation): ray_current_cluster in Ray's temp folder, which is
    RAY_TMPDIR's, else TMPDIR's, else /tmp's ray/."""
    base = os.environ["RAY_TMPDIR"] if "RAY_TMPDIR" in os.environ else os.environ.get("TMPDIR", "/tmp")
    path = Path(base) / "ray" / "ray_current_cluster"
    try:
        address = path.read_text().strip()
    except OSError:
        return None
    return (path, address) if address else None


def start_local_ray() -> None:
    try:
        ray.init(address="local", logging_level="WARNING")  # a Ray of its own, whatever else runs on this machine
    except OSError as e:
        if "AF_UNIX path length" not in str(e):
            raise
        named = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR"
        folder = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
        raise UserError(f"{named}={folder} is too long a path for Ray's sockets, which it puts in a session folder "
                        "there (a socket's path has at most 107 bytes): set RAY_TMPDIR to a short folder, such as "
                        "export RAY_TMPDIR=/tmp") from None


def check_reachable(address: str, named: str | None = None, instead: str = "leave out --address") -> None:
    """Ray retries an unreachable address for minutes; one TCP connection tells in seconds. `named` and `instead`:
    where the address came from and how to do without it, for the errors."""
    named = named or f"--address {address}"
    host, _, port = address.split("://", 1)[-1].rpartition(":")  # ray://host:port (Ray Client's) too
    if not host or not port.isdigit():
        raise UserError(f"{named}: give host:port of the head node (port 6379 by default) or 'auto', "
                        f"or {instead} to run on this machine")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(
            f"{named}: nothing answers there ({e.strerror or e}); start the head node with "
            f"`ray start --head --port {port}`, or {instead} to run on this machine"
        ) from None


@ray.remote(num_cpus=0)
class Converter:
    """One per fingerprint in the cluster (a named actor): drivers that start together queue on it,
    so the first converts and the others read its result from storage."""

    @ray.method(num_returns=2)
    def prepare(self, data: DataConfig, storage: Location):
        # A UserError is returned, not raised: Ray would wrap it in a traceback-bearing RayTaskError.
        try:
            split, conversion = prepare_split(data, storage)
        except UserError as e:
            return e, None
        return conversion, split


def convert_once(data: DataConfig, storage: Location) -> tuple[Conversion, ray.ObjectRef]:
    """Convert (or find) the split on this, the driver's, node, where --data-dir is; the split
    stays in the object store, where every node's trials read it."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    name = f"quickdraw-convert-{conversion_fingerprint(data)}"
    for attempt in range(1, CONVERT_ATTEMPTS + 1):
        converter = Converter.options(
            name=name, namespace="quickdraw", get_if_exists=True, scheduling_strategy=here
        ).remote()
        _converters.append(converter)
        outcome, split = converter.prepare.remote(data, storage)
        try:
            outcome = ray.get(outcome)
        except RayActorError:
            # The converter belonged to another driver, which let go of it while our call waited
            # behind its own; a new converter finds that driver's split in storage.
            if attempt == CONVERT_ATTEMPTS:
                raise
            continue
        if isinstance(outcome, UserError):
            raise outcome
        return outcome, split


def alive_nodes() -> list[dict]:
    """The resources of each node of the cluster that is alive."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def this_machine() -> dict:
    """This machine's resources as a Ray started here would have at most: its CPUs (Ray counts fewer where a
    container's quota says so) and the GPUs torch sees."""
    import torch

    return {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}


def fitting_resources(config: SearchConfig, nodes: list[dict], where: str) -> dict:
    """Each trial's CPUs and GPUs (`trial_resources`), refused in one line when no node has that many: Tune would wait
    for room that never comes. `where` names the nodes: THIS_MACHINE, or the cluster."""
    resources = trial_resources(config, nodes)
    asked = [f"--{kind}s-per-trial {value:g}" for kind, value in (("cpu", config.cpus_per_trial),
                                                                   ("gpu", config.gpus_per_trial)) if value is not None]
    check_fits(resources, nodes, where, " ".join(asked) or "each trial's default share")
    return resources


def check_fits(resources: dict, nodes: list[dict], where: str, asked: str) -> None:
    """Refuse trials of `resources` that no node of `nodes` holds; `asked` names where the shares came from."""
    if any(node.get("CPU", 0) >= resources["cpu"] and node.get("GPU", 0) >= resources["gpu"] for node in nodes):
        return
    shapes = sorted({(node.get("CPU", 0), node.get("GPU", 0)) for node in nodes})
    has = "; ".join(amounts(cpus, gpus) for cpus, gpus in shapes) or "no node"
    advice = ("ask for at most that, or join a larger Ray cluster with --address" if where == THIS_MACHINE
              else "ask for at most what one node has")
    raise UserError(f"{asked}: a trial needs {amounts(resources['cpu'], resources['gpu'])}, and {where} has "
                    f"{'nodes of ' if len(shapes) > 1 else ''}{has}, so no trial could ever start: {advice}")


def amounts(cpus: float, gpus: float) -> str:
    def counted(value: float, name: str) -> str:
        return f"{value:g} {name}{'' if value == 1 else 's'}" if value else f"no {name}"

    return f"{counted(cpus, 'CPU')} and {counted(gpus, 'GPU')}"


def trial_resources(config: SearchConfig, nodes: list[dict]) -> dict:
    """CPUs and GPUs per trial, from the resources of each of the cluster's nodes (`alive_nodes`).

    By default all trials run at once. Ray puts a fractional GPU request on one GPU, never across two, so the
    trials are spread evenly over the GPUs: ceil(trials / GPUs) on each, every one taking 1 / that of a GPU
    (4 GPUs, 15 trials: 4 a GPU, 0.25 each, not 15 / 4 = 0.2666, of which only 3 fit on a GPU). The CPUs beside
    them are per node: a node with g GPUs takes up to g times as many trials as a GPU does (no more than there
    are), and each gets that share of the node's CPUs, at most 1; with several GPU nodes, the smallest share, so
    that every node fits its trials. Without GPUs each trial takes one CPU. docs/gpus.md has worked examples."""
    trials = config.concurrent_trials
    gpu_nodes = [node for node in nodes if int(node.get("GPU", 0)) >= 1]  # a GPU is a whole device
    gpus = config.gpus_per_trial
    if gpus is None:
        total = sum(int(node["GPU"]) for node in gpu_nodes)
        gpus = _round_down(1 / math.ceil(trials / total)) if total else 0
    cpus = config.cpus_per_trial
    if cpus is None:
        cpus = 1.0
        if gpus and gpu_nodes:
            per_gpu = 10_000 // max(1, round(gpus * 10_000))  # trials that fit on a GPU, in Ray's steps of 0.0001
            cpus = min(min(1.0, _round_down(node.get("CPU", 0) / min(trials, int(node["GPU"]) * per_gpu)))
                       for node in gpu_nodes)
    return {"cpu": cpus, "gpu": gpus}


def _round_down(share: float) -> float:
    # Ray accepts fractional resources in steps of 0.0001; rounding down keeps the sum within the total. A share is
    # a node's resources (whole steps) over a number of trials, so within 1e-9 of a step it is one: floating point.
    return math.floor(share * 10_000 + 1e-9) / 10_000
