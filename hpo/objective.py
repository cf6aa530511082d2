"""One trial of a sweep: the run function DeepHyper evaluates.

A trial writes the candidate stage config to ``DIR/trials/NNNNN/config.yaml`` (exactly the file
``connectome hpo report`` later offers as the best config), copies the validation workspace's
inputs into ``DIR/trials/NNNNN/ws``, runs the stage (and for training sweeps the inference that
uses the new model) and ``connectome evaluate`` in one child process (``python -m hpo.trial``,
with the budget's wall-clock limit), and returns the objective read from ``ws/evaluation.json``
(sign applied: DeepHyper maximises). Anything that goes wrong -- a command exiting non-zero, the
time limit, a metric that is not a finite number, an exception here -- is returned as a
DeepHyper failure (a string starting with ``"F"``), never raised; the reason is in the trial's
``result.json`` and ``log.txt``.

The child runs without the MPI launcher's environment (``PMI_*`` etc.), so a trial started by an
``mpicomm`` worker rank trains and segments as one process instead of joining a Horovod job.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpo.space import Space, load_space

#: launcher variables a trial's child must not inherit (it is one process, not a rank)
_MPI_PREFIXES = ("PMI_", "PMIX_", "MPI_LOCAL", "MPIR_", "HYDRA_", "OMPI_", "PALS_", "HOROVOD_", "I_MPI_")

_SPACES: dict[str, Space] = {}


def _space(path: str) -> Space:
    if path not in _SPACES:
        _SPACES[path] = load_space(path)
    return _SPACES[path]


def trial_dir(out: str | Path, job_id) -> Path:
    return Path(out) / "trials" / f"{int(str(job_id).split('.')[-1]):05d}"


def write_yaml(path: Path, data: dict, header: str = "") -> None:
    import yaml

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    os.replace(tmp, path)


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_PREFIXES)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prepare_workspace(space: Space, dst: Path) -> Path:
    """A fresh workspace with the validation workspace's input arrays only."""
    src = Path(space.validation["workspace"]) / "volume.zarr"
    vol = dst / "volume.zarr"
    vol.mkdir(parents=True)
    shutil.copy2(src / "zarr.json", vol / "zarr.json")
    for name in space.inputs:
        if (src / name).is_dir():
            shutil.copytree(src / name, vol / name)
    return dst


def commands(space: Space, tdir: Path, ws: Path) -> list[list[str]]:
    """The connectome commands of one trial (argv lists, without the program name)."""
    cfg = str(tdir / "config.yaml")
    quiet = ["--executor", "serial", "--no-progress"]
    out: list[list[str]] = []
    if space.stage == "segment":
        cmd = ["segment", "--workspace", str(ws), "--config", cfg, *quiet]
        if space.validation.get("model"):
            cmd += ["--model", space.validation["model"]]
        out.append(cmd)
    else:
        kind = space.stage.split("-", 1)[1]
        model = str(tdir / "model")
        train = ["train", kind, "--out", model, "--config", cfg]
        for d in space.train["data"]:
            train += ["--data", d]
        for d in space.train["val"]:
            train += ["--val", d]
        out.append(train)
        if kind == "ffn":
            infer = ["segment", "--workspace", str(ws), "--model", model, *quiet]
            extra = space.train.get("segment_config")
        else:
            infer = ["mask-vessels", "--workspace", str(ws), "--model", model, *quiet]
            extra = space.train.get("mask_config")
        out.append(infer + (["--config", extra] if extra else []))
    ev = ["evaluate", "--workspace", str(ws), "--truth", space.validation["truth"]]
    if space.validation.get("evaluate_config"):
        ev += ["--config", space.validation["evaluate_config"]]
    out.append(ev)
    return out


def _run_child(cmds: list[list[str]], tdir: Path, timeout: float | None) -> tuple[int | None, str]:
    """Run the commands in one child; (exit code or None on timeout, last stderr line)."""
    (tdir / "commands.json").write_text(json.dumps(cmds, indent=1))
    with open(tdir / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.trial", str(tdir / "commands.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return None, f"over the budget of {timeout:g} s"
    lines = [ln for ln in (tdir / "log.txt").read_text(errors="replace").splitlines() if ln.startswith("connectome:")]
    return rc, (lines[-1] if lines else "")


def score(space: Space, ws: Path) -> tuple[float | None, dict, str]:
    """(objective or None, metrics of the scored section, reason if None) from evaluation.json."""
    path = ws / "evaluation.json"
    if not path.is_file():
        return None, {}, "no evaluation.json"
    section = json.loads(path.read_text()).get(space.section) or {}
    if section.get("status") != "ok":
        return None, section, f"section {space.section}: {section.get('status')} ({section.get('reason', '')})"
    value = section.get(space.key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, section, f"{space.section}.{space.key} is {value!r}"
    return space.sign * float(value), section, ""


def run_trial(job, space_file: str, out: str):
    """DeepHyper's run function: ``job.parameters`` -> objective (maximised) or ``"F_..."``."""
    t0 = time.monotonic()
    tdir = trial_dir(out, job.id)
    result: dict = {"job_id": str(job.id)}
    try:
        space = _space(space_file)
        values = {p.name: p.coerce(job.parameters[p.name]) for p in space.params}
        result["parameters"] = values
        if tdir.exists():  # left by a killed run: this job id is being run again
            shutil.rmtree(tdir)
        tdir.mkdir(parents=True)
        write_yaml(tdir / "config.yaml", space.trial_config(values))
        ws = prepare_workspace(space, tdir / "ws")
        rc, why = _run_child(commands(space, tdir, ws), tdir, space.seconds)
        result["seconds"] = round(time.monotonic() - t0, 2)
        if rc is None:
            return _fail(tdir, result, "F_timeout", why)
        if rc != 0:
            return _fail(tdir, result, f"F_exit_{rc}", why or f"a command exited with {rc} (see log.txt)")
        objective, metrics, why = score(space, ws)
        if objective is None:
            return _fail(tdir, result, "F_not_scored", why)
        shutil.rmtree(ws, ignore_errors=True)
        base = space.base_point()
        meta = {
            "seconds": result["seconds"],
            "trial_dir": str(tdir),
            "base_config": base is not None and all(_close(base[k], values[k]) for k in base),
        }
        meta.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        result.update(status="ok", objective=objective, metrics=metrics)
        (tdir / "result.json").write_text(json.dumps(result, indent=1, default=str))
        return {"objective": objective, "metadata": meta}
    except Exception as exc:  # noqa: BLE001 - a trial must never crash the search
        return _fail(tdir, result, "F_error", f"{type(exc).__name__}: {exc}")


async def run_trial_async(job, space_file: str, out: str):
    """:func:`run_trial` for DeepHyper's serial evaluator (which takes coroutines only)."""
    return run_trial(job, space_file, out)


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _fail(tdir: Path, result: dict, code: str, reason: str) -> str:
    result.update(status="failed", failure=code, reason=reason)
    try:
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    except OSError:
        pass
    return code
