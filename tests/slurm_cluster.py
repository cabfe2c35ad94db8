"""A throwaway single-node SLURM cluster on this machine, for the tests that need the real
scheduler: munged, slurmctld and slurmd run as root, with their key, config, state and logs in
one folder, on ports of their own, so that they touch nothing of a cluster the machine may
already belong to. Client commands (sbatch, srun, scontrol) find it through $SLURM_CONF."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NOT_INSTALLED = "slurm-wlm and munge not installed; .ci/run installs them"
START_TIMEOUT_S = 30  # from launching the daemons to an idle node; it takes about 2 s
COMMAND_TIMEOUT_S = 10  # a client command waits minutes for a controller that is not there
# How long a requeued job waits before it may start again: SLURM's 120 s by default, a test's
# time; submitit requeues a preempted job with `scontrol requeue`.
REQUEUE_DELAY_S = 5


def find_daemons() -> dict[str, str]:
    """The path of each daemon, on PATH or in /usr/sbin (not on a non-root user's PATH)."""
    found = {}
    for name in DAEMONS:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin")
        if path:
            found[name] = path
    return found


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or None."""
    if len(find_daemons()) < len(DAEMONS):
        return NOT_INSTALLED
    if os.geteuid() != 0:
        return "a test SLURM cluster needs root: slurmd starts jobs as their user"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def slurm_conf(root: Path, node: str) -> str:
    """slurm.conf for one node, `node` being `slurmd -C`'s description of this machine
    (its CPUs and memory, as slurmd will register them)."""
    host = node.split()[0].removeprefix("NodeName=")
    return "\n".join([
        "ClusterName=halluc-test",
        # on the loopback address: the host name need not resolve (containers, CI runners)
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        # cred_expire is also the requeue delay; the scheduler's pass every sched_interval
        # seconds then starts the job.
        f"AuthInfo=socket={root / 'munge.socket'},cred_expire={REQUEUE_DELAY_S}",
        "SchedulerParameters=sched_interval=1",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        # no cgroups: the machine (a container, a CI runner) may not delegate them
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",  # CPUs are what runs share; --mem is only checked against the node's
        "ReturnToService=2",  # a node that was down comes back as soon as its slurmd registers
        "MpiDefault=none",
        "MailProg=/bin/true",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ])  # fmt: skip


class SlurmCluster:
    """The daemons of a one-node cluster whose files live under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.daemons: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        """This process's environment, pointed at this cluster: for commands that submit to it
        (their jobs inherit it, PYTHONPATH included)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str, check: bool = True) -> str:
        """Run a client command (sinfo, scontrol, ...) against this cluster; its stdout."""
        result = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        """Write the key and config, start the daemons, and wait for the node to be idle."""
        paths = find_daemons()
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)  # munged refuses a key others can read
        node = self._this_node(paths["slurmd"])
        self.conf.write_text(slurm_conf(self.root, node))
        self._launch("munged", paths["munged"], "--foreground", f"--key-file={key}",
                     f"--socket={self.root / 'munge.socket'}", f"--pid-file={self.root / 'munged.pid'}",
                     f"--seed-file={self.root / 'munged.seed'}")  # fmt: skip
        self._wait_for(lambda: (self.root / "munge.socket").exists(), "munged's socket")
        # -c: a fresh controller, no jobs or node states recovered from an earlier run
        self._launch("slurmctld", paths["slurmctld"], "-D", "-c", "-f", str(self.conf))
        self._launch("slurmd", paths["slurmd"], "-D", "-f", str(self.conf))
        self._wait_for(self._node_idle, "the node to be idle in sinfo")

    @staticmethod
    def _this_node(slurmd: str) -> str:
        """`slurmd -C`'s NodeName=... line: this machine's CPUs and memory as slurmd sees them."""
        described = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        for line in described.stdout.splitlines():
            if line.startswith("NodeName="):
                return line
        raise RuntimeError(f"slurmd -C described no node: {described.stdout}{described.stderr}")

    def _launch(self, name: str, *args: str) -> None:
        """Start a daemon in the foreground, its log (stderr) in log/NAME.out."""
        # Its own session: Ctrl-C on pytest reaches pytest only, and teardown stops the daemons.
        with open(self.root / "log" / f"{name}.out", "wb") as out:
            self.daemons[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _node_idle(self) -> bool:
        return self.command("sinfo", "--noheader", "--format=%T", check=False).strip() == "idle"

    def _wait_for(self, ready, what: str) -> None:
        """Poll `ready` until it is true; raise with the daemons' output when one died or time ran out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            dead = [name for name, process in self.daemons.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                problem = f"{', '.join(dead)} exited" if dead else f"{START_TIMEOUT_S} s passed"
                raise RuntimeError(f"test SLURM cluster: waiting for {what}, {problem}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The last lines of every daemon's log, for a failure message."""
        parts = []
        for path in sorted((self.root / "log").iterdir()):
            tail = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel what still runs, then stop the daemons, slurmd first."""
        controller = self.daemons.get("slurmctld")
        try:
            if controller is not None and controller.poll() is None:
                self.command("scancel", "--user=root", check=False)
                # slurmd must outlive the job steps it ends, or their processes linger.
                deadline = time.monotonic() + COMMAND_TIMEOUT_S
                while self.command("squeue", "--noheader", check=False).strip() and time.monotonic() < deadline:
                    time.sleep(0.2)
        except subprocess.TimeoutExpired:
            pass  # no controller answers: stop the daemons all the same
        for name in reversed(list(self.daemons)):
            process = self.daemons.pop(name)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def job_field(self, job_id: str, field: str) -> str:
        """One `Field=value` of `scontrol show job` (JobState, Restarts, ...)."""
        for word in self.command("scontrol", "show", "job", job_id).split():
            if word.startswith(f"{field}="):
                return word.split("=", 1)[1]
        raise KeyError(f"scontrol show job {job_id} has no {field}")
