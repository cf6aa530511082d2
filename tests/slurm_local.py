"""A throw-away single-node Slurm (munge + slurmctld + slurmd) with Debian's Torque-compatible
``qsub`` wrapper (``slurm-wlm-torque``), for tests that submit real job scripts.

Recipe from ``shared/ENVIRONMENT.md``: munged runs as user munge (/run/munge owned by munge),
slurmctld and slurmd run in the foreground as children of this process from a temporary
slurm.conf (this host, the machine's CPUs, ``proctrack/linuxproc``, ``task/none``,
``select/cons_tres`` + ``CR_Core_Memory``, ``DefMemPerCPU``, ``MpiDefault=none``) on free ports,
so nothing system-wide is touched and :meth:`LocalSlurm.stop` ends exactly what was started.
``DependencyParameters=kill_invalid_depend`` makes Slurm cancel the dependants of a failed
``afterok`` job, as PBS Pro deletes them.

``missing_reason()`` says why a cluster cannot be started here (no root, no apt-get, packages
not installable); ``ensure_packages()`` installs them with apt-get when missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "slurm-wlm-torque", "munge")
TOOLS = ("munged", "slurmctld", "slurmd", "qsub", "sbatch", "squeue", "scontrol", "sacct", "sinfo")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None
    )


def ensure_packages(timeout: float = 600) -> str | None:
    """Install the Slurm packages with apt-get if a tool is missing; returns why not, or None."""
    if all(_which(t) for t in TOOLS):
        return None
    if os.geteuid() != 0:
        return "slurm-wlm/slurm-wlm-torque/munge are not installed and this is not root (no apt-get install)"
    if not shutil.which("apt-get"):
        return "slurm-wlm/slurm-wlm-torque/munge are not installed and apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True, text=True, env=env, timeout=timeout
    )
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=timeout)
        r = subprocess.run(
            ["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True, text=True, env=env, timeout=timeout
        )
    if r.returncode != 0 or not all(_which(t) for t in TOOLS):
        return f"apt-get install {' '.join(PACKAGES)} failed: {(r.stderr or r.stdout).strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
        return dec.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalSlurm:
    """``with LocalSlurm(tmpdir) as slurm: slurm.env`` -> the environment for qsub/squeue/sacct."""

    def __init__(self, base: str | os.PathLike, cpus: int | None = None):
        self.base = Path(base)
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.base / "slurm.conf"
        self._procs: list[subprocess.Popen] = []
        self._munged_pid: int | None = None

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- munge -------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        if _munge_works():
            return  # a munged is already running (started by someone else): use it, never stop it
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
            shutil.chown(key, "munge", "munge")
        for d in ("/var/lib/munge", "/var/log/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        subprocess.run(
            ["runuser", "-u", "munge", "--", _which("munged"), "--force"], check=True, capture_output=True, timeout=30
        )
        pid_file = run_dir / "munged.pid"
        deadline = time.time() + 20
        while time.time() < deadline and not _munge_works():
            time.sleep(0.2)
        if not _munge_works():
            raise RuntimeError("munged did not start")
        if pid_file.exists():
            self._munged_pid = int(pid_file.read_text().split()[0])

    # -- slurm -------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        for d in ("state", "spool", "log"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        b = self.base
        self.conf.write_text(f"""\
ClusterName=ctest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
DependencyParameters=kill_invalid_depend
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> "LocalSlurm":
        self._start_munge()
        self._write_conf()
        env = self.env
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.base / "log" / f"{daemon}.out", "w")
            args = [_which(daemon), "-D", "-f", str(self.conf)]
            if daemon == "slurmctld":
                args.append("-c")  # fresh state, no jobs from an earlier run
            self._procs.append(
                subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
            time.sleep(0.5)
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: {self.logs()}")
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            state = r.stdout.strip()
            if r.returncode == 0 and state.startswith("idle"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"slurm node not idle after {timeout} s (state {state!r}): {self.logs()}")

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            p = self.base / "log" / name
            if p.exists():
                out.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def job_states(self, job_ids) -> dict[str, str]:
        """job id -> Slurm state (COMPLETED, FAILED, CANCELLED, PENDING, RUNNING, ...)."""
        out = {}
        for jid in job_ids:
            r = subprocess.run(["scontrol", "show", "job", str(jid)], capture_output=True, text=True, env=self.env)
            state = next((w.split("=", 1)[1] for w in r.stdout.split() if w.startswith("JobState=")), "UNKNOWN")
            out[str(jid)] = state
        return out

    def wait(self, job_ids, timeout: float) -> dict[str, str]:
        """Wait until no job of ``job_ids`` is pending or running; returns their states."""
        deadline = time.time() + timeout
        while True:
            states = self.job_states(job_ids)
            if not any(s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "UNKNOWN") for s in states.values()):
                return states
            if time.time() > deadline:
                return states
            time.sleep(1)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True, env=self.env, timeout=30)
        for p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()
        if self._munged_pid:
            try:
                os.kill(self._munged_pid, 15)
            except ProcessLookupError:
                pass
            self._munged_pid = None

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
