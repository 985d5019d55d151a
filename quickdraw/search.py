"""A search from start to end, and a stopped one resumed: the inputs checked before anything is written, the
experiment claimed for this driver, Ray, the split converted once, search.json, then the Tuner fitted."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
from datetime import datetime

import ray
from ray import tune

from quickdraw.cluster import (
    THIS_MACHINE, alive_nodes, check_fits, chosen_address, convert_once, fitting_resources, ray_session, runs_here,
    starts_ray_here, this_machine,
)
from quickdraw.config import SearchConfig
from quickdraw.dataset import check_inputs, load_split
from quickdraw.download import fetch_missing
from quickdraw.errors import DiskFull, Interrupted, StorageFault, UserError
from quickdraw.experiment import check_resumable, load_trials, split_location, what_ran
from quickdraw.lease import DRIVERS_DIR, STALE_S, claim
from quickdraw.provenance import run_record
from quickdraw.search_record import SEARCH_FILE, SearchRecord
from quickdraw.storage import Location, full_disk
from quickdraw.tuner import build_tuner, fit, restore_tuner, trainable
from quickdraw.whole_files import remove_staged_files


def run_search(config: SearchConfig) -> Location:
    """Run the whole search and return the experiment folder, `<storage>/<name>`."""
    storage = Location.parse(config.storage)
    name = config.name or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    experiment = storage / name
    # Ray's workers do not share our working directory: hand them an absolute --data-dir.
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=config.data.data_dir.resolve()))
    if starts_ray_here(config.address):  # a trial that this machine cannot hold is refused before Ray starts
        fitting_resources(config, [this_machine()], THIS_MACHINE)
    storage.check_writable()
    refuse_existing(experiment)
    fetch_missing(config.data)
    check_inputs(config.data, storage)
    # Bad input (an address where nothing listens, a trial no node holds, too) is refused before anything is written;
    # the claim is the first thing written.
    with ray_session(config.address), stopped_cleanly(experiment):
        nodes = alive_nodes()
        resources = fitting_resources(config, nodes, nodes_named(config.address))
        with claim(experiment, "pick another --name, or omit it for a timestamp"):
            refuse_existing(experiment)  # a driver that claimed it first may have run its search since our first look
            conversion, split = convert_once(config.data, storage)
            print(f"split {conversion.counts} of {len(config.data.classes)} classes "
                  f"{'reused from' if conversion.reused else 'converted into'} {conversion.directory}")
            record = SearchRecord(config, conversion.directory.uri, resources,
                                  run_record(ray.cluster_resources(), len(nodes)))
            record.write(experiment)
            fit(build_tuner(config, trainable(split, record.resources, config.space), storage, name), experiment)
            record_what_ran(experiment, record)
    return experiment


def nodes_named(address: str | None) -> str:
    return THIS_MACHINE if runs_here(address) else f"the Ray cluster at {chosen_address(address)[1]}"


def refuse_existing(experiment: Location) -> None:
    if experiment.exists() and not never_started(experiment):
        raise UserError(f"{experiment} already exists: pick another --name, or omit it for a timestamp; to continue "
                        f"that search: python tune_search.py resume {experiment}")


def never_started(experiment: Location) -> bool:
    """The folder holds a search that was stopped (Ctrl-C, SIGKILL) before Tune saved any state, after its search.json
    or before, when it holds only drivers' claims: `run` starts it over, as `resume` has nothing to continue."""
    started = (experiment / SEARCH_FILE).is_file() or {f.name for f in experiment.children()} <= {DRIVERS_DIR}
    return started and not tune.Tuner.can_restore(experiment.uri)


def resume_search(experiment: Location, address: str | None) -> Location:
    """Continue a search whose driver stopped: finished trials stay as they are, the others go on
    from their last checkpoints (errored ones too, with a fresh allowance of failures)."""
    record = check_resumable(experiment)
    asked = f"{experiment}'s trials (search.json)"
    if starts_ray_here(address):  # trials this machine cannot hold are refused before Ray starts
        check_fits(record.resources, [this_machine()], THIS_MACHINE, asked)
    with claim(experiment, f"wait for it to end; if its machine was lost, resume once the driver has been silent for "
                           f"{STALE_S} s"):
        location = split_location(experiment)
        arrays = load_split(location)  # before Ray starts: a damaged split is refused at once
        with ray_session(address), stopped_cleanly(experiment):
            check_fits(record.resources, alive_nodes(), nodes_named(address), asked)
            split = ray.put(arrays)  # into the object store: the trials share its copy
            del arrays
            if experiment.is_local:  # only this driver writes here now (its claim aside): the rest, a killed one left
                remove_staged_files(experiment.path, keep=DRIVERS_DIR)
            print(f"resuming {experiment} with the split in {location}")
            tuner = restore_tuner(experiment, trainable(split, record.resources, record.config.space))
            fit(tuner, experiment, restored=True)
            record_what_ran(experiment, record)
    return experiment


@contextlib.contextmanager
def stopped_cleanly(experiment: Location):
    """A search that stops early ends in one line that names the command that goes on: Ctrl-C stops Tune gracefully
    and restores Python's handler, so a second one becomes Interrupted; a full disk becomes DiskFull, which names the
    disk (Ray Tune stops with whatever it was writing, or reading back, at the time); object storage that failed
    becomes StorageFault, or, when its bucket or files under the experiment are gone, a UserError (resuming cannot
    bring them back)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(experiment) from None
    except UserError:
        raise
    except Exception as e:
        if stopped := storage_stopped(experiment, e):
            raise stopped from None
        raise


def storage_stopped(experiment: Location, error: BaseException) -> UserError | None:
    """The error that says how the storage stopped the search in `experiment`, when it did; None when it did not."""
    if disk := full_disk(experiment.uri, error):
        return DiskFull(disk, experiment)
    if not (fault := experiment.fault(error)):
        return None
    if fault.kind == "gone":
        return UserError(f"{fault}; the search's files went with it: run the same command again to start it over")
    if fault.kind == "deleted":  # resuming cannot bring them back; what is left stays as it is
        return UserError(f"{fault}; `python tune_search.py report {shlex.quote(str(experiment))}` lists the trials "
                         "that are left")
    return StorageFault(str(fault), experiment)


def record_what_ran(experiment: Location, record: SearchRecord) -> None:
    """Add to search.json what the trials' `precision` ("auto" or asked for) resolved to, and on which devices."""
    dataclasses.replace(record, ran=what_ran(load_trials(experiment)[1])).write(experiment)
