"""How long the full decision takes for a 70B model, all methods (issue 14's target: <= 2 s cold).

For each scenario: cold, a fresh `peftplan plan ... --format json` process with an empty spec cache (imports,
per-method plans with their fit search, the decision's search, and when nothing fits the suggestions,
each re-planned); warm, the same plan again in a process that has run it once; and the decision alone
(`planner.decide.decide` on the plan's inputs, warm, with a fresh search cache).
Prints a table; run with `.venv/bin/python benchmarks/decide_speed.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODEL = "meta-llama/Llama-3.1-70B"
TARGET = 2.0
SCENARIOS = {
    "24 GiB: nothing fits, suggestions": ["--vram", "24"],
    "48 GiB: tight, sequence shortened": ["--vram", "48"],
    "8 x H100: sharding searched": ["--gpu", "h100", "--gpus", "8"],
    "H100, 500 tenants, 200k examples": ["--gpu", "h100", "--tasks", "500", "--switching", "multi-tenant",
                                         "--examples", "200000"],
}


def plan_args(extra: list[str]) -> list[str]:
    return ["plan", "--model", MODEL, *extra, "--format", "json"]


def cold(extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PEFTPLAN_CACHE_DIR": cache}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "peftplan.cli", *plan_args(extra)], env=env,
                                capture_output=True)
        elapsed = time.perf_counter() - started
    if result.returncode not in (0, 3):
        raise SystemExit(result.stderr.decode())
    return elapsed


def warm(extra: list[str]) -> tuple[float, float]:
    """(the whole plan, the decision alone), in a process that has already run the plan once."""
    from peftplan.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(plan_args(extra))
        started = time.perf_counter()
        main(plan_args(extra))
        whole = time.perf_counter() - started
    return whole, decision_alone(extra)


def decision_alone(extra: list[str]) -> float:
    from peftplan.cli import main
    from peftplan.planner import decide as decide_module

    captured: dict[str, object] = {}
    original = decide_module.decide

    def spy(inputs: decide_module.Inputs, **kwargs: object) -> object:
        captured["inputs"] = inputs
        return original(inputs, **kwargs)  # type: ignore[arg-type]

    decide_module.decide = spy  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(plan_args(extra))
    finally:
        decide_module.decide = original
    assert "inputs" in captured
    started = time.perf_counter()
    original(captured["inputs"])  # type: ignore[arg-type]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    print(f"peftplan plan --model {MODEL} ... --format json (all methods), {runs} runs each; target {TARGET:.1f} s cold")
    print("| scenario | cold median (s) | cold max (s) | warm plan (s) | decision alone (s) | target |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, extra in SCENARIOS.items():
        colds = [cold(extra) for _ in range(runs)]
        warms = [warm(extra) for _ in range(runs)]
        whole = statistics.median(w for w, _ in warms)
        alone = statistics.median(d for _, d in warms)
        print(f"| {name} (`{' '.join(extra)}`) | {statistics.median(colds):.2f} | {max(colds):.2f} | {whole:.2f} | "
              f"{alone:.2f} | {TARGET:.2f} |")


if __name__ == "__main__":
    main()
