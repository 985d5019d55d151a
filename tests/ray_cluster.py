"""A Ray cluster of separate processes on this machine, started the way users start one: `ray start`.

The head takes this machine's address; each worker node gets its own loopback address (127.0.0.2,
127.0.0.3, ...), so Ray's `node_ip` in every trial's results tells which node ran it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


class LoopbackCluster:
    def __init__(self, workers: int = 2, cpus_per_node: int = 1):
        # Short on purpose: Ray's socket paths under the temp dir must fit in 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="qdray-", dir="/tmp")
        self.port = free_port()
        self.worker_ips = [f"127.0.0.{2 + i}" for i in range(workers)]
        self.cpus_per_node = cpus_per_node
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",  # what a user's cluster has; drivers joining it need the same
            "RAY_AUTH_TOKEN": uuid.uuid4().hex,
            "RAY_health_check_period_ms": "1000",  # notice a dead node in seconds, not the default 15 s
            "RAY_health_check_failure_threshold": "3",
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LoopbackCluster:
        self._ray("start", "--head", f"--port={self.port}", f"--num-cpus={self.cpus_per_node}",
                  "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp_dir}")
        for ip in self.worker_ips:
            self._ray("start", f"--address={self.address}", f"--node-ip-address={ip}",
                      f"--num-cpus={self.cpus_per_node}")
        return self

    def _ray(self, *args: str) -> None:
        result = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]

    def kill_node(self, ip: str) -> int:
        """SIGKILL every process of the node at `ip`, as if its machine lost power; returns how many."""
        return kill_processes(self.temp_dir, f"-ip-address={ip}", f"_ip_address={ip}")

    def stop(self) -> None:
        kill_processes(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def kill_processes(mentioning: str, *any_of: str) -> int:
    """SIGKILL this user's processes whose command line contains `mentioning` (and one of `any_of`)."""
    killed = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if mentioning in cmdline and (not any_of or any(a in cmdline for a in any_of)) and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue  # gone already, or not ours
    return killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
