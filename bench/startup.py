"""Start-up cost of the command line and of config validation (issue 14: "well under a
second after Python starts").  Each command runs 5 times in a fresh interpreter; prints
the median wall time, bare Python's start for reference, and the load average.

    .venv/bin/python bench/startup.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "searchlab search --help": [sys.executable, "-m", "searchlab.cli", "search", "--help"],
    "searchlab --help": [sys.executable, "-m", "searchlab.cli", "--help"],
    "load_config(strategy=sb3, task=mnist1d)": [
        sys.executable, "-c",
        "from searchlab.config import load_config; load_config(['strategy=sb3', 'task=mnist1d'])"],
    "import searchlab (registers the env)": [sys.executable, "-c", "import searchlab"],
}


def main() -> None:
    print(f"load average: {os.getloadavg()}")
    base = None
    for name, cmd in CASES.items():
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd="/")
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        base = med if base is None else base
        print(f"{name:45s} {med:6.3f} s   ({med - base:+.3f} s after Python starts)")


if __name__ == "__main__":
    main()
