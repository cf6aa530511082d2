"""``connectome demo``: synthesise a dataset and run the stages that exist so far, then evaluate.

Today: synth (demo preset) -> stitch -> align -> evaluate. Later stages (vessels, FFN, synapses,
graph, export) join as their issues land. Every step is the real CLI command, so the demo is
resumable like any run: rerunning it skips finished work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def run_demo(workspace: str | Path, preset: str = "demo", seed: int = 1, progress: bool = False) -> int:
    from connectome.cli import main

    ws = Path(workspace)
    data = ws.parent / f"{ws.name}-data"
    prog = ["--progress"] if progress else ["--no-progress"]
    timings = {}

    def step(name, argv):
        t0 = time.perf_counter()
        print(f"== {name}: connectome {' '.join(argv)}", flush=True)
        rc = main(argv)
        timings[name] = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(rc)

    step("synth", ["synth", str(data), "--preset", preset, "--seed", str(seed)] + prog)
    shape = json.loads((data / "synth.json").read_text())["shape_zyx"]
    step("stitch", ["stitch", "--tiles", str(data / "tiles" / "manifest.csv"), "--workspace", str(ws),
                    "--frame-shape", f"{shape[1]},{shape[2]}"] + prog)
    step("align", ["align", "--workspace", str(ws)] + prog)
    step("evaluate", ["evaluate", "--workspace", str(ws), "--truth", str(data)])
    print("\ndemo timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"workspace: {ws}   ground truth: {data}   metrics: {ws / 'evaluation.json'}")
    return 0
