"""Run a command and report its wall time and the peak RSS of its whole process tree."""

from __future__ import annotations

import subprocess
import time

import psutil


def run_measured(cmd: list[str], interval: float = 0.05, **kwargs) -> tuple[float, int, subprocess.CompletedProcess]:
    """(seconds, peak RSS bytes summed over the process and all its descendants, result)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [ps] + ps.children(recursive=True)
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(interval)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    return seconds, peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)
