"""How long `peftplan plan --model meta-llama/Llama-3.1-70B --vram 24` takes: all methods, fit search included.

cold: a fresh process with an empty spec cache (what a user's first command costs);
warm: the same plan again in a process that has already imported peftplan.
Prints a table; run with `.venv/bin/python benchmarks/plan_speed.py [--runs N] [extra plan args]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ARGS = ["plan", "--model", "meta-llama/Llama-3.1-70B", "--vram", "24", "--format", "json"]


def cold(args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PEFTPLAN_CACHE_DIR": cache}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "peftplan.cli", *args], env=env, capture_output=True)
        elapsed = time.perf_counter() - started
    if result.returncode not in (0, 3):
        raise SystemExit(result.stderr.decode())
    return elapsed


def warm(args: list[str]) -> float:
    import contextlib
    import io

    from peftplan.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(args)  # imports and first-use caches
        started = time.perf_counter()
        main(args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    known, extra = parser.parse_known_args()
    args = ARGS + extra
    colds = [cold(args) for _ in range(known.runs)]
    warms = [warm(args) for _ in range(known.runs)]
    print(f"peftplan {' '.join(args)}")
    print("| run | median (s) | min (s) | max (s) | target |")
    print("|---|---:|---:|---:|---:|")
    print(f"| cold (new process, empty cache) | {statistics.median(colds):.2f} | {min(colds):.2f} | {max(colds):.2f} | 1.00 |")  # issue 11
    print(f"| warm (in process) | {statistics.median(warms):.2f} | {min(warms):.2f} | {max(warms):.2f} | |")


if __name__ == "__main__":
    main()
