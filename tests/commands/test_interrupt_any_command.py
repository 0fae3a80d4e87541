"""Ctrl-C in any command (not only bench and worker) says so in one line and exits 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


def test_ctrl_c_in_trace_prints_one_line_and_exits_130() -> None:
    # A trace of SmolLM2 at a long sequence runs for many seconds: the interrupt lands mid-run, not at its end.
    process = subprocess.Popen(
        [sys.executable, "-m", "peftplan.cli", "trace", "--model", "HuggingFaceTB/SmolLM2-135M", "--method", "lora",
         "--seq-len", "32768"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(4.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the trace finished before the interrupt on this machine: nothing was interrupted")
    assert process.returncode == 130, err
    assert err.strip() == "peftplan: interrupted (Ctrl-C)"
