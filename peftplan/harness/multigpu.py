"""Launch a data-parallel trial through `accelerate launch` (DDP), one process per GPU.

On a machine without GPUs the same path runs N CPU processes on the gloo backend (`ACCELERATE_USE_CPU=1`
with `--multi_gpu`, which accelerate turns into its multi-CPU mode); that is how it is tested here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from peftplan.errors import PeftplanError


def accelerate_command(spec_path: Path, processes: int, port: int) -> list[str]:
    """The `accelerate launch` command line for `processes` ranks of `harness/ddp_step.py`."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "peftplan.harness.ddp_step", str(spec_path)]


def launch_data_parallel(spec: dict[str, Any], work_dir: Path, *, processes: int, timeout: float) -> dict[str, Any]:
    """Run the ranks and return rank 0's report (per-rank peaks next to the per-GPU prediction).

    Raises:
        PeftplanError: the launch failed or timed out (with the tail of its log).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "ranks.json"
    spec_path = work_dir / "ddp_spec.json"
    spec_path.write_text(json.dumps({**spec, "out": str(out)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if spec["device"] == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
    log = work_dir / "ddp_log.txt"
    with open(log, "wb") as handle:
        try:
            done = subprocess.run(accelerate_command(spec_path, processes, _free_port()), stdout=handle,
                                  stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeftplanError(f"data-parallel trial exceeded {timeout:g} s; log: {log}") from None
    if done.returncode != 0 or not out.is_file():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[:400]
        raise PeftplanError(f"accelerate launch exited with {done.returncode}: {tail}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
