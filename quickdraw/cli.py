"""The command line: flags parsed and checked into configs, the package called, and its outcome printed as one line
per error (exit code 2), the summary table, and the exit code."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import shlex
import sys
from pathlib import Path

from quickdraw.catalogue import HYPERPARAMETERS, Hyperparameter
from quickdraw.config import (
    ASHA_GRACE_PERIOD, ASHA_REDUCTION_FACTOR, DEFAULT_SAMPLES, EXPORT_FORMATS, GOOGLE_BASE_URL, MAX_SEED, PRECISIONS,
    SCHEDULERS, SEARCHES, SEED_CLASSES, DataConfig, SearchConfig, SplitSizes, check_ensemble,
)
from quickdraw.errors import DiskFull, Interrupted, StorageFault, UserError
from quickdraw.space import flag_dimension, load_space, merge

COMMANDS = ("run", "resume", "convert", "download", "report", "predict", "play")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv.insert(0, "run")  # the grid search is the default command
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DiskFull as e:
        go_on = resume_line(e.experiment, getattr(args, "address", None))
        print(f"tune_search.py: error: {e}; free some space there, then go on: {go_on}", file=sys.stderr)
        return 2
    except StorageFault as e:
        go_on = resume_line(e.experiment, getattr(args, "address", None))
        print(f"tune_search.py: error: {e}, then go on: {go_on}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"tune_search.py: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        go_on = resume_line(e.experiment, getattr(args, "address", None))
        print(f"tune_search.py: interrupted; to go on: {go_on}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("tune_search.py: interrupted; run the same command again to go on where it stopped", file=sys.stderr)
        return 130
    except OSError as e:
        from quickdraw.storage import full_disk

        if fault := storage_fault(args, e):
            then = f"go on: {resume_line(args.experiment, args.address)}" if args.command == "resume" else \
                "run the command again"
            print(f"tune_search.py: error: {fault}, then {then}", file=sys.stderr)
            return 2
        written = e.filename or getattr(args, "experiment", None) or getattr(args, "storage", None) or args.data_dir
        if not (disk := full_disk(str(written), e)):
            raise
        print(f"tune_search.py: error: {disk}; free some space there, then run the command again", file=sys.stderr)
        return 2


def storage_fault(args, error: OSError):
    """How the object storage the command reads or writes failed it, when it is why `error` happened (see
    Location.fault); None otherwise."""
    from quickdraw.storage import Location

    place = getattr(args, "experiment", None) or getattr(args, "storage", None)
    if not place or "://" not in place:
        return None
    try:
        return Location.parse(place).fault(error)
    except UserError:
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tune_search.py",
        description="Ray Tune hyperparameter search for a CNN on Quick, Draw! drawings: by default the seed's "
        "learning-rate x batch-size grid. Without a command it runs the search ('run').",
    )
    commands = parser.add_subparsers(dest="command", parser_class=OneLineParser)

    run = commands.add_parser("run", help="convert the data once, run the search, write the summary (default)")
    add_data_flags(run)
    run.add_argument("--search", choices=SEARCHES, default=SearchConfig.search,
                     help="grid: every combination of the values; random: Tune's random sampling; optuna: Optuna's "
                     "TPE (Bayesian) sampler (default %(default)s)")
    run.add_argument("--space", type=Path, metavar="FILE",
                     help="YAML or JSON file of the hyperparameters to search and their values or distributions "
                     "(docs/search-spaces.md); the flags below set the rest")
    run.add_argument("--num-samples", type=int, metavar="N",
                     help=f"with --search random or optuna: trials to sample (default {DEFAULT_SAMPLES})")
    run.add_argument("--max-concurrent-trials", type=int, metavar="N",
                     help="run at most N trials at once (a Bayesian search learns more when fewer run at once; "
                     "default: as many as the resources allow)")
    for hyperparameter in HYPERPARAMETERS:
        add_hyperparameter_flag(run, hyperparameter)
    run.add_argument("--epochs", type=int, default=SearchConfig.epochs, help="epochs per trial (default %(default)s)")
    run.add_argument("--scheduler", choices=SCHEDULERS, default=SearchConfig.scheduler,
                     help="'asha': stop trials whose validation loss lags behind (Ray Tune's ASHA); "
                     "'none': every trial runs all epochs (default %(default)s)")
    run.add_argument("--grace-period", type=int, metavar="N",
                     help=f"with --scheduler asha: epochs every trial runs before it can be stopped "
                     f"(default {ASHA_GRACE_PERIOD})")
    run.add_argument("--reduction-factor", type=float, metavar="F",
                     help=f"with --scheduler asha: ASHA checks trials at grace period x F^k epochs and "
                     f"lets about 1/F of them go on (default {ASHA_REDUCTION_FACTOR:g})")
    run.add_argument("--name", help="experiment folder under --storage (default: a timestamp)")
    run.add_argument("--gpus-per-trial", type=float, default=None,
                     help="GPUs per trial, at most 1 (a trial trains on one GPU); 0.25 puts four trials on a GPU "
                     "(default: 1 / ceil(trials / GPUs), so that all trials run at once; see docs/gpus.md)")
    run.add_argument("--cpus-per-trial", type=float, default=None,
                     help="CPUs per trial; torch uses that many threads, rounded down, at least 1 (default 1 "
                     "without GPUs; with GPUs, a share of each GPU node's CPUs, at most 1, that lets all its trials run)")
    run.add_argument("--max-failures", type=int, default=SearchConfig.max_failures,
                     help="restarts of a failed trial, each from its last checkpoint; -1 for no limit (default %(default)s)")
    run.add_argument("--precision", choices=PRECISIONS, default=SearchConfig.precision,
                     help="bf16 autocast or fp32; auto takes bf16 where the GPU or CPU computes it natively (default %(default)s)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile each trial's model (slower than eager on a small CPU: see benchmarks/README.md)")
    add_ensemble_flag(run, "(default %(default)s)")
    add_address_flag(run)
    run.set_defaults(handler=run_command)

    resume = commands.add_parser(
        "resume", help="continue a search whose driver stopped, with the search's own settings: finished trials "
        "stay, the others go on from their checkpoints (trusted folders only: Ray Tune's restore un-pickles them)",
        description="Continue a search whose driver stopped, with the search's own settings: finished trials stay, "
        "the others go on from their checkpoints. Resume only experiment folders you trust (ones your own searches "
        "wrote, in storage only you can write): Ray Tune's restore un-pickles the state the folder holds "
        "(tuner.pkl, the searcher's state, the pickled fields of experiment_state-*.json), and a crafted pickle "
        "runs code as you. `report` and `predict` never un-pickle, and are safe on any folder.")
    resume.add_argument("experiment", help="the experiment folder, <storage>/<name> (a path or URI)")
    add_address_flag(resume)
    resume.set_defaults(handler=resume_command)

    convert = commands.add_parser("convert", help="only convert the data into <storage>/datasets/<fingerprint>/")
    add_data_flags(convert)
    convert.add_argument("--png", action="store_true",
                         help="also write the seed's PNG layout: png/<train|validation|test>/<Class>/<n>.png")
    convert.set_defaults(handler=convert_command)

    download = commands.add_parser(
        "download", help="only download the class files into --data-dir: the drawings the split needs, or --full files")
    add_source_flags(download)
    download.add_argument("--full", action="store_true",
                          help="download whole files (about 100 MB a class) instead of the drawings the split needs")
    download.set_defaults(handler=download_command)

    report = commands.add_parser(
        "report", help="rebuild summary.md/.csv/.json, report/*.png and report.html of an experiment folder, "
        "and print or export its table")
    report.add_argument("experiment", help="the experiment folder, <storage>/<name> (a path or URI)")
    report.add_argument("--format", choices=EXPORT_FORMATS, default="md",
                        help="format of the table printed or written to --output (default %(default)s)")
    report.add_argument("--output", metavar="FILE", help="write the table to FILE (a path or URI, outside the "
                        "experiment; '-': standard output) instead of printing it")
    add_ensemble_flag(report, "(default: the search's own --ensemble)", default=None)
    report.set_defaults(handler=report_command)

    predict = commands.add_parser(
        "predict", help="classify drawings with an experiment's best model: the top classes of each, with probabilities")
    predict.add_argument("experiment", help="the experiment folder, <storage>/<name> (a path or URI)")
    predict.add_argument("drawings", nargs="+", type=Path, metavar="DRAWING",
                         help="an image of a drawing (PNG, any size, dark on light or light on dark), "
                         "or a .npy of 28x28 uint8 bitmaps like Google's")
    predict.add_argument("--top", type=int, default=3, help="classes shown per drawing (default %(default)s)")
    predict.set_defaults(handler=predict_command)

    play = commands.add_parser(
        "play", help="serve a page where you draw and the best model guesses, as you draw (Ctrl-C stops)")
    play.add_argument("experiment", help="the experiment folder, <storage>/<name> (a path or URI)")
    play.add_argument("--host", default="127.0.0.1",
                      help="address to listen on; another than loopback serves the page to other machines too "
                      "(default %(default)s: this machine only)")
    play.add_argument("--port", type=int, default=8000, help="port to listen on; 0: any free one (default %(default)s)")
    play.set_defaults(handler=play_command)
    return parser


def add_hyperparameter_flag(parser: argparse.ArgumentParser, hyperparameter: Hyperparameter) -> None:
    """The hyperparameter's flag, which parses straight into its dimension of the search space; a flag that takes one
    value as well, when the catalogue names one, excludes it."""
    default = ",".join(map(hyperparameter.written, hyperparameter.default))
    listed = "comma-separated values, each tried: " if hyperparameter.many else ""
    help_text = f"{listed}{hyperparameter.meaning} (default {default})"
    parse = functools.partial(checked_flag, hyperparameter, hyperparameter.flag, hyperparameter.many)
    if not hyperparameter.single_flag:
        parser.add_argument(hyperparameter.flag, dest=hyperparameter.name, type=parse,
                            metavar=hyperparameter.metavar, help=help_text)
        return
    either = parser.add_mutually_exclusive_group()
    either.add_argument(hyperparameter.single_flag, dest=hyperparameter.name,
                        type=functools.partial(checked_flag, hyperparameter, hyperparameter.single_flag, False),
                        metavar=hyperparameter.metavar.split(",")[0],
                        help=f"{hyperparameter.meaning}: {hyperparameter.allowed} (default {default})")
    either.add_argument(hyperparameter.flag, dest=hyperparameter.name, type=parse, metavar=hyperparameter.metavar,
                        help=f"{listed}{hyperparameter.meaning}")


def checked_flag(hyperparameter: Hyperparameter, flag: str, listed: bool, text: str):
    try:
        return flag_dimension(hyperparameter, text, flag, listed)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_ensemble_flag(parser: argparse.ArgumentParser, default_words: str, default=SearchConfig.ensemble) -> None:
    parser.add_argument("--ensemble", type=int, metavar="N", default=default,
                        help="best_model/ is an ensemble of the finished trials, chosen on validation by up to N steps "
                        "of greedy ensemble selection; 1: the best trial alone (docs/models.md) " + default_words)


def add_address_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="join the running Ray cluster at host:port, or 'auto' for the one on this machine "
                        "(default: start Ray here)")


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    """Which drawings: the class files, and where missing ones are downloaded from."""
    parser.add_argument("--data-dir", type=Path, default=DataConfig.data_dir,
                        help="folder of <class>.npy or full_numpy_bitmap_<class>.npy files (default %(default)s)")
    parser.add_argument("--classes", type=name_list, default=SEED_CLASSES, metavar="NAME,...",
                        help="comma-separated class names (default: the seed's ten)")
    parser.add_argument("--split", type=split_sizes, default=SplitSizes(), metavar="TRAIN,VAL,TEST",
                        help="train,validation,test totals, divided evenly among classes "
                        f"(default {joined(dataclasses.astuple(SplitSizes()))})")
    parser.add_argument("--base-url", default=GOOGLE_BASE_URL, metavar="URL",
                        help="folder URL that class files are downloaded from, <URL>/<class>.npy (default: Google's)")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    add_source_flags(parser)
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="fail on a missing class file instead of downloading the drawings the split needs")
    parser.add_argument("--seed", type=seed, default=DataConfig.seed,
                        help=f"seed of the split, of training and of the random or Optuna sampler, 0 to {MAX_SEED} "
                        "(default %(default)s)")
    parser.add_argument("--storage", default=SearchConfig.storage,
                        help="where datasets and experiments are written (default %(default)s)")


def joined(values) -> str:
    return ",".join(map(str, values))


def name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def float_list(text: str) -> tuple[float, ...]:
    return _number_list(text, float)


def int_list(text: str) -> tuple[int, ...]:
    return _number_list(text, int)


def _number_list(text: str, kind) -> tuple:
    try:
        return tuple(kind(part) for part in name_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"give a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def split_sizes(text: str) -> SplitSizes:
    sizes = int_list(text)
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers train,validation,test, got {text!r}")
    return SplitSizes(*sizes)


def data_config(args) -> DataConfig:
    return DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split, seed=args.seed,
                      base_url=args.base_url, download=args.download)


def run_command(args) -> int:
    config = search_config(args)
    config.validate()
    check_home()
    from quickdraw.search import run_search  # Ray and torch load only for real work

    return finish(run_search(config), args.address)


def search_config(args) -> SearchConfig:
    """The search that `run`'s flags describe, not yet validated: the hyperparameters from --space where it names
    them, from their flags otherwise, their defaults where neither does."""
    given = tuple(getattr(args, h.name) for h in HYPERPARAMETERS if getattr(args, h.name) is not None)
    file_space = load_space(args.space) if args.space is not None else ()
    return SearchConfig(
        data=data_config(args), space=merge(given, file_space), search=args.search,
        space_file=args.space and str(args.space), num_samples=args.num_samples,
        max_concurrent_trials=args.max_concurrent_trials, epochs=args.epochs, storage=args.storage, name=args.name,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        address=args.address, max_failures=args.max_failures, precision=args.precision, compile=args.compile,
        scheduler=args.scheduler, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        ensemble=args.ensemble,
    )


def resume_command(args) -> int:
    if not args.experiment.strip():
        raise UserError("resume needs the experiment folder <storage>/<name> (a path or URI)")
    check_home()
    from quickdraw.search import resume_search
    from quickdraw.storage import Location

    return finish(resume_search(Location.parse(args.experiment, flag="resume").confined(), args.address), args.address)


def check_home() -> None:
    """Ray keeps its authentication token in ~/.ray (and matplotlib its cache in ~/.config): HOME must be writable."""
    home = Path.home()
    try:
        (home / ".ray").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"HOME={home} cannot be written ({e.strerror}), and Ray keeps files in ~/.ray: set HOME to a "
                        "folder you can write, such as export HOME=/tmp/$USER") from None


def finish(experiment, address: str | None) -> int:
    """Write and print the summary; exit code 1, and the command that goes on, when a trial did not end (finished,
    stopped by ASHA or diverged)."""
    from quickdraw.report import write_report
    from quickdraw.summary import ENDED, to_markdown

    try:
        summary = write_report(experiment)  # with the ensemble size the search recorded
    except KeyboardInterrupt:  # a second Ctrl-C, after Tune stopped on the first
        raise Interrupted(experiment) from None
    except Exception as e:
        from quickdraw.search import storage_stopped

        if stopped := storage_stopped(experiment, e):
            raise stopped from None
        raise
    print(to_markdown(summary))
    print(where_to_look(experiment))
    if len(summary.table) and summary.table["status"].isin(ENDED).all():  # none: stopped before the first
        return 0
    print(f"Not every trial finished; to go on: {resume_line(experiment, address)}")
    return 1


def where_to_look(experiment) -> str:
    """The line after a search's table: its summary, its report, and the command that shows it in TensorBoard."""
    return (f"Summary: {experiment / 'summary.md'}  Report: {experiment / 'report.html'}  "
            f"TensorBoard: tensorboard --logdir {shlex.quote(str(experiment))}")


def resume_line(experiment, address: str | None) -> str:
    """The command that continues the search in `experiment`, on the same cluster."""
    on_cluster = f" --address {shlex.quote(address)}" if address else ""
    return f"python tune_search.py resume {shlex.quote(str(experiment))}{on_cluster}"


def convert_command(args) -> int:
    data = data_config(args)
    data.validate()
    from quickdraw.dataset import prepare_split, write_pngs
    from quickdraw.download import fetch_missing
    from quickdraw.storage import Location

    storage = Location.parse(args.storage)
    storage.check_writable()
    fetch_missing(data)
    split, conversion = prepare_split(data, storage)
    print(f"{'reused' if conversion.reused else 'converted'} {conversion.counts} -> {conversion.directory}")
    if args.png:
        print(f"PNG files in {write_pngs(split, conversion.directory)}")
    return 0


def download_command(args) -> int:
    data = DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split, base_url=args.base_url)
    data.validate(min_classes=1)
    from quickdraw.bitmaps import checked_row_count
    from quickdraw.download import download_classes

    wanted = {name: None if args.full else rows for name, rows in data.drawings_per_class().items()}
    for path in download_classes(data.data_dir, wanted, data.base_url):
        print(f"{path}: {checked_row_count(path)} drawings, {path.stat().st_size / 2**20:.1f} MiB")
    return 0


def report_command(args) -> int:
    from quickdraw.storage import Location, output_file, write_output

    experiment = Location.parse(args.experiment, flag="report").confined()
    if args.ensemble is not None:
        check_ensemble(args.ensemble)
    output = output_file(args.output, experiment=experiment) if args.output is not None else None
    if not experiment.is_dir():
        raise UserError(f"{experiment} is not a folder: give the experiment folder <storage>/<name>")
    from quickdraw.report import write_report
    from quickdraw.summary import export

    try:
        summary = write_report(experiment, args.ensemble)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise UserError(f"report {experiment}: the folder cannot be written ({e.strerror}), and the report's files "
                        "go into it: copy the folder somewhere writable and report on the copy") from None
    text = export(summary, args.format)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0
    write_output(output, text)
    print(f"{args.format} table written to {output}; report: {experiment / 'report.html'}", file=sys.stderr)
    return 0


def predict_command(args) -> int:
    from quickdraw.predict import predict
    from quickdraw.storage import Location

    for line in predict(Location.parse(args.experiment, flag="predict").confined(), args.drawings, args.top):
        print(line)
    return 0


def play_command(args) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 0 to 65535 (0: any free one)")
    from quickdraw.play import play
    from quickdraw.storage import Location

    return play(Location.parse(args.experiment, flag="play").confined(), args.host, args.port)
