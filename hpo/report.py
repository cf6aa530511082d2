"""``connectome hpo report DIR``: the best configuration, the top runs and a plot.

Writes, in DIR:

* ``best.yaml``  -- the best trial's stage config, byte for byte the ``config.yaml`` that trial
  ran with (base config + fixed fields + budget steps + its parameters), headed by comments;
  loadable as it is with the stage's ``--config`` (checked here with the stage's own loader);
* ``top.csv``    -- the top runs (objective, parameters, seconds, the scored section's metrics);
* ``objective.png`` -- objective of every evaluation in order, the running best, failures marked.

and prints the table of the top runs.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from connectome.errors import UserInputError
from hpo.run import RESULTS, as_number, read_results


def _load(out: Path) -> tuple[dict, list[dict]]:
    if not out.is_dir():
        raise UserInputError(f"DIR {out}: not found")
    if not (out / RESULTS).is_file() or not (out / "space.json").is_file():
        raise UserInputError(
            f"DIR {out}: no results.csv and space.json (not a `connectome hpo run` --out folder, "
            "or no trial finished yet)"
        )
    try:
        snap = json.loads((out / "space.json").read_text())
        rows = read_results(out)
    except (OSError, ValueError, csv.Error) as exc:
        raise UserInputError(f"DIR {out}: cannot read results ({exc})") from None
    return snap, rows


def report(out, top: int = 10) -> int:
    out = Path(out)
    if top < 1:
        raise UserInputError(f"--top: expected a positive number, got {top}")
    snap, rows = _load(out)
    params = [c for c in (rows[0].keys() if rows else []) if c.startswith("p:")]
    ok = [r for r in rows if as_number(r.get("objective")) is not None]
    failed = len(rows) - len(ok)
    if not ok:
        raise UserInputError(
            f"DIR {out}: no successful evaluation among {len(rows)} in results.csv "
            "(see trials/*/result.json for the reasons)"
        )
    ok.sort(key=lambda r: (-as_number(r["objective"]), int(r["job_id"])))
    best = ok[0]
    from hpo.objective import trial_dir

    src = trial_dir(out, best["job_id"]) / "config.yaml"
    if not src.is_file():
        raise UserInputError(f"DIR {out}: the best trial's config {src} is missing")
    _check_loadable(snap["stage"], src)
    base = [r for r in ok if str(r.get("m:base_config")).lower() == "true"]
    header = (
        f"# best of {len(rows)} evaluations of a `connectome hpo run` sweep ({snap['stage']}, objective "
        f"{snap['objective']} = {as_number(best['objective']):.6g}, trial {best['job_id']})\n"
        f"# use: connectome {_stage_cmd(snap['stage'])} ... --config best.yaml\n"
    )
    tmp = out / "best.yaml.tmp"
    tmp.write_text(header + src.read_text())
    tmp.replace(out / "best.yaml")

    metric_cols = [
        c
        for c in rows[0]
        if c.startswith("m:")
        and c
        not in (
            "m:timestamp_submit",
            "m:timestamp_gather",
            "m:timestamp_start",
            "m:timestamp_end",
            "m:trial_dir",
            "m:base_config",
            "m:seconds",
        )
    ]
    cols = ["rank", "job_id", "objective"] + params + ["m:seconds"] + metric_cols
    table = [
        [str(i + 1), r["job_id"], _fmt(r["objective"])] + [_fmt(r.get(c)) for c in params + ["m:seconds"] + metric_cols]
        for i, r in enumerate(ok[:top])
    ]
    with open(out / "top.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([c.removeprefix("p:").removeprefix("m:") for c in cols])
        for r in ok[:top]:
            w.writerow(
                [ok.index(r) + 1, r["job_id"], r["objective"]]
                + [r.get(c, "") for c in params + ["m:seconds"] + metric_cols]
            )
    _plot(rows, out / "objective.png", snap["objective"])

    print(
        f"hpo report: {out} -- {snap['stage']} sweep, objective {snap['objective']}: {len(rows)} evaluations, "
        f"{failed} failed"
    )
    shown = ["rank", "job_id", "objective"] + [c[2:] for c in params] + ["seconds"]
    width = len(shown)
    _print_table(shown, [row[:width] for row in table])
    line = f"best: objective {as_number(best['objective']):.6g} (trial {best['job_id']})"
    if base:
        line += f"; base config: {as_number(base[0]['objective']):.6g} (trial {base[0]['job_id']})"
    print(line)
    print(f"wrote {out / 'best.yaml'}, {out / 'top.csv'}, {out / 'objective.png'}")
    return 0


def _stage_cmd(stage: str) -> str:
    return {"train-ffn": "train ffn", "train-vessel": "train vessel"}.get(stage, stage)


def _check_loadable(stage: str, path: Path) -> None:
    import importlib

    from connectome.config import load_config
    from hpo.space import STAGES

    module, cls, _ = STAGES[stage]
    load_config(getattr(importlib.import_module(module), cls), path)


def _fmt(v) -> str:
    n = as_number(v)
    if n is None:
        return "" if v is None else str(v)
    return str(int(n)) if n == int(n) and abs(n) < 1e12 and "." not in str(v) else f"{n:.5g}"


def _print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _plot(rows: list[dict], path: Path, objective: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: int(r["job_id"]))
    xs = [int(r["job_id"]) for r in rows]
    ys = [as_number(r["objective"]) for r in rows]
    good = [(x, y) for x, y in zip(xs, ys) if y is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if good:
        ax.plot([x for x, _ in good], [y for _, y in good], "o", color="tab:blue", label="evaluation")
        best, run = [], float("-inf")
        for _, y in good:
            run = max(run, y)
            best.append(run)
        ax.step([x for x, _ in good], best, where="post", color="tab:orange", label="best so far")
        bad = [x for x, y in zip(xs, ys) if y is None]
        if bad:
            lo = min(y for _, y in good)
            ax.plot(bad, [lo] * len(bad), "x", color="tab:red", label="failed")
    ax.set_xlabel("evaluation (job id)")
    ax.set_ylabel(f"objective ({objective}, maximised)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    shutil.move(str(tmp), str(path))
