"""A private single-node SLURM on this machine for the tests: Debian's ``slurm-wlm`` and ``munge``
installed when missing (as root, with apt-get), then munged, slurmctld and slurmd started on free
ports with their own configuration, sockets and state under one directory, and stopped again.

Nothing outside that directory is configured (``SLURM_CONF`` points the SLURM commands at it), so
two test runs on one machine do not meet. Needs root: slurmd starts jobs as their submitting user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
INSTALL_TIMEOUT_S = 900


class Unavailable(Exception):
    """SLURM cannot be installed or started here; the message says why (the test skips with it)."""


def _sbin(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )


def ensure_installed() -> None:
    """Install Debian's slurm-wlm and munge unless their daemons are already there."""
    if all(_sbin(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise Unavailable(f"{', '.join(PACKAGES)} not installed and not root (cannot apt-get install them)")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{', '.join(PACKAGES)} not installed and no apt-get on this machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0 or not all(_sbin(d) for d in DAEMONS):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {' | '.join(tail)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise Unavailable("cannot read MemTotal from /proc/meminfo")


@dataclass
class SlurmNode:
    """A running one-node SLURM cluster (``env`` holds what its commands need)."""

    directory: Path
    node: str
    env: dict[str, str]
    processes: list[subprocess.Popen]

    def run(self, *command: str, timeout: float = 30) -> str:
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[str]:
        """The jobs ``squeue`` lists (``ID STATE NAME``), empty when the queue is."""
        return self.run("squeue", "--noheader", "--format=%i %T %j").split("\n")[:-1]

    def log(self, daemon: str) -> str:
        path = self.directory / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


def _wait(condition, what: str, node: SlurmNode | None = None, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {d}.log\n{node.log(d)[-2000:]}" for d in DAEMONS) if node else ""
            raise Unavailable(f"gave up waiting for {what}\n{logs}")
        time.sleep(0.2)


def start(directory: Path) -> SlurmNode:
    """munged, slurmctld and slurmd for a one-node cluster of this machine's CPUs and memory."""
    ensure_installed()
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root to start jobs")
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (directory / sub).mkdir(exist_ok=True)
    munge = directory / "munge"
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge.chmod(0o700)
    ctld_port, slurmd_port, host = _free_port(), _free_port(), socket.gethostname()
    node = f"skyprep{slurmd_port}"
    conf = directory / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                f"ClusterName=skyprep{ctld_port}",
                f"SlurmctldHost={host}(127.0.0.1)",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={slurmd_port}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge / 'munge.socket'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "SchedulerType=sched/backfill",
                "MpiDefault=none",
                "ReturnToService=2",
                "SlurmdTimeout=30",
                "InactiveLimit=0",
                "KillWait=5",
                "JobCompType=jobcomp/none",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                f"StateSaveLocation={directory / 'state'}",
                f"SlurmdSpoolDir={directory / 'spool'}",
                f"SlurmctldPidFile={directory / 'slurmctld.pid'}",
                f"SlurmdPidFile={directory / 'slurmd.pid'}",
                f"SlurmctldLogFile={directory / 'slurmctld.log'}",
                f"SlurmdLogFile={directory / 'slurmd.log'}",
                f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
                f"RealMemory={int(_memory_mb() * 0.9)} State=UNKNOWN",
                f"PartitionName=skyprep Nodes={node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmNode(directory, node, env, [])
    logs = open(directory / "daemons.out", "ab")

    def launch(*command: str) -> None:
        cluster.processes.append(subprocess.Popen(command, env=env, stdout=logs, stderr=subprocess.STDOUT))

    try:
        launch(_sbin("munged"), "--foreground", "--force", f"--socket={munge / 'munge.socket'}",
               f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munge.seed'}",
               f"--log-file={directory / 'munged.log'}")  # fmt: skip
        _wait(lambda: (munge / "munge.socket").exists(), "munged's socket", cluster, 20)
        launch(_sbin("slurmctld"), "-D", "-i", "-f", str(conf))
        _wait(lambda: cluster.run("sinfo", "--noheader"), "slurmctld to answer", cluster)
        launch(_sbin("slurmd"), "-D", "-f", str(conf), "-N", node)
        _wait(lambda: cluster.run("sinfo", "--noheader", "-N", "-o", "%T").split() == ["idle"], "an idle node", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster
