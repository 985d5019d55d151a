"""One driver at a time per experiment (quickdraw.lease): of drivers that claim it together exactly one wins, locally
and on S3; a live driver's claim refuses the others, a released, silent or dead one does not."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from quickdraw.errors import UserError
from quickdraw.lease import DRIVERS_DIR, STALE_S, claim
from quickdraw.storage import Location
from conftest import BUCKET

RACERS = 6
# Each racer waits for the same moment, claims, says whether it won, and holds its claim until told to let go.
RACE = """
import sys, time
from quickdraw.errors import UserError
from quickdraw.lease import claim
from quickdraw.storage import Location
experiment, start = Location.parse(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0, start - time.time()))
try:
    lease = claim(experiment, "pick another --name")
    print("won", lease.file.name, flush=True)
except UserError as e:
    print("refused", e, flush=True)
sys.stdin.read()
"""


def race(experiment: str, env: dict | None = None) -> list[str]:
    """RACERS processes claiming `experiment` at one moment; what each said."""
    start = time.time() + 3  # once every racer has imported
    racers = [subprocess.Popen([sys.executable, "-c", RACE, experiment, str(start)], cwd=REPO, env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for _ in range(RACERS)]
    outcomes = [racer.stdout.readline().strip() for racer in racers]  # all claimed before any lets go
    for racer in racers:
        racer.communicate("", timeout=30)
    return outcomes


def check_one_winner(outcomes: list[str]) -> None:
    winners = [o for o in outcomes if o.startswith("won")]
    assert winners == ["won 0001.json"], outcomes
    refused = [o for o in outcomes if o.startswith("refused")]
    assert len(refused) == RACERS - 1 and all("is being run by another driver" in o for o in refused), outcomes


@pytest.mark.slow
def test_of_drivers_claiming_a_local_experiment_together_exactly_one_wins(tmp_path):
    check_one_winner(race(str(tmp_path / "exp")))
    assert [f.name for f in (tmp_path / "exp" / DRIVERS_DIR).iterdir()] == ["0001.json"]  # no staged file is left


@pytest.mark.slow
def test_of_drivers_claiming_an_experiment_in_a_bucket_together_exactly_one_wins(s3_env):
    check_one_winner(race(f"s3://{BUCKET}/claims/exp", env=s3_env))


def write_claim(experiment, number: int, **record) -> None:
    folder = experiment / DRIVERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{number:04d}.json").write_text(json.dumps(record))


def ended_process() -> tuple[int, float]:
    """The pid and start time of a process of this host that has ended."""
    import psutil

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    started = psutil.Process(process.pid).create_time()
    process.wait()
    return process.pid, started


def test_a_live_claim_refuses_another_driver_in_one_line(tmp_path):
    import psutil

    me = psutil.Process()
    here = {"host": socket.gethostname(), "pid": me.pid, "process_started": me.create_time(), "released": False}
    write_claim(tmp_path, 1, **here, renewed=time.time())
    with pytest.raises(UserError) as refused:
        claim(Location.parse(str(tmp_path)), "wait for it to end")
    assert str(refused.value) == (f"{tmp_path} is being run by another driver, pid {me.pid} on "
                                  f"{socket.gethostname()} (alive 0 s ago): wait for it to end")
    write_claim(tmp_path, 2, host="elsewhere", pid=1, process_started=0, released=False, renewed=time.time() - 5)
    with pytest.raises(UserError, match="pid 1 on elsewhere"):
        claim(Location.parse(str(tmp_path)), "wait for it to end")


@pytest.mark.parametrize("holder", ["released", "silent", "dead", "damaged"])
def test_a_released_silent_dead_or_damaged_claim_lets_the_next_driver_in(tmp_path, holder):
    pid, started = ended_process()
    records = {
        "released": dict(host="elsewhere", pid=1, process_started=0, released=True, renewed=time.time()),
        "silent": dict(host="elsewhere", pid=1, process_started=0, released=False, renewed=time.time() - STALE_S - 1),
        # SIGKILLed on this host a moment ago: its claim is stale at once, not after STALE_S.
        "dead": dict(host=socket.gethostname(), pid=pid, process_started=started, released=False, renewed=time.time()),
    }
    if holder == "damaged":
        (tmp_path / DRIVERS_DIR).mkdir()
        (tmp_path / DRIVERS_DIR / "0001.json").write_text('{"host": "elsew')
    else:
        write_claim(tmp_path, 1, **records[holder])
    with claim(Location.parse(str(tmp_path)), "wait") as lease:
        assert lease.file.name == "0002.json"
        assert json.loads((tmp_path / DRIVERS_DIR / "0002.json").read_text())["released"] is False
        with pytest.raises(UserError, match="is being run by another driver"):
            claim(Location.parse(str(tmp_path)), "wait")
    assert json.loads((tmp_path / DRIVERS_DIR / "0002.json").read_text())["released"] is True
    with claim(Location.parse(str(tmp_path)), "wait") as lease:
        assert lease.file.name == "0003.json"
