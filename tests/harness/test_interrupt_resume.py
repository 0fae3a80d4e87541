"""Ctrl-C in `peftplan bench`, then the same command again: through a real terminal (a pseudo-terminal whose
line discipline turns ^C into SIGINT, as a user's does), real subprocesses and a real sqlite study.

Interrupted: one line says so and how to resume, exit 130. Resumed: the live display starts from the trials
already done, its "best so far" table holds the result from before the interrupt, and the interrupted trial
runs again with `retry_of` naming it. Then the embedded model's GGUF conversion, which draws no progress bars
into a log.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from peftplan.errors import BadInputError
from peftplan.harness.progress import make_progress
from peftplan.results import TrialStatus, read_result
from tests.harness.tiny import write_suite
from tests.processes import processes_with

pytestmark = pytest.mark.timeout(180)

RESUME_LINE = "peftplan: interrupted (Ctrl-C); re-run the same command to resume"
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class Terminal:
    """A command on a fresh pseudo-terminal of 120 columns, as its controlling terminal; output read as it comes."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE")}
        env.update(TERM="xterm-256color", COLUMNS="120", LINES="50", HF_HUB_OFFLINE="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "peftplan.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env,
            start_new_session=True,  # then the pty becomes its controlling terminal, with it in the foreground
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        self.raw = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not chunk:
                return
            self.raw += chunk

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the line discipline sends SIGINT to the foreground process group

    def wait(self, timeout: float) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        os.close(self.master)
        return code, ANSI.sub("", bytes(self.raw).decode(errors="replace"))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"bench exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def screen_lines(text: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def bar_counts(lines: list[str], key: str, total: int) -> list[int]:
    """Every M of the `key trials ... M/total` bar, frame after frame."""
    found = (re.search(rf"{key} trials\b.*?\b(\d+)/{total}\b", line) for line in lines)
    return [int(match.group(1)) for match in found if match]


def best_cells(lines: list[str], key: str) -> list[str]:
    """Every value of the method's row in the "best so far" table, frame after frame."""
    found = (re.search(rf"[│|]\s*{key}\s*[│|]\s*(\S+)\s*[│|]", line) for line in lines)
    return [match.group(1) for match in found if match]


def test_ctrl_c_says_how_to_resume_and_the_resumed_display_starts_from_what_is_done(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {
        "methods": [{"name": "lora", "trials": 1}, {"name": "ia3", "trials": 1}],  # round robin: lora-0, ia3-0
        "search": {"pruner": {"kind": "none"}},
        "training": {"steps": 30, "eval_every": 15, "threads": 1},
        "eval": {"forgetting": None, "latency": None, "task_examples": 8, "loss_examples": 8},
    })
    run = tmp_path / "run"
    first = Terminal(["bench", str(suite), "--run-dir", str(run)])
    # The known point: lora-0 is recorded and ia3-0's trial process runs.
    wait_for(lambda: (run / "trials" / "lora-0.json").exists()
             and bool(processes_with(str(run / "work" / "ia3-0" / "spec.json"))), 120, "trial ia3-0", first.process)
    first.ctrl_c()
    code, text = first.wait(timeout=60)
    assert code == 130, text
    assert [line for line in screen_lines(text) if line.startswith("peftplan:")] == [
        f"{RESUME_LINE}: finished trials are kept and the interrupted trial runs again"], text
    assert "Traceback" not in text
    assert not processes_with(str(run / "work" / "ia3-0" / "spec.json"))  # the trial went with its runner
    done = read_result(run / "trials" / "lora-0.json")
    canceled = read_result(run / "trials" / "ia3-0.json")
    assert done.status == TrialStatus.SUCCESS and done.metrics.task_metric is not None
    assert canceled.status == TrialStatus.CANCELED and "Ctrl-C" in (canceled.error or "")

    second = Terminal(["bench", str(suite), "--run-dir", str(run)])
    code, text = second.wait(timeout=120)
    assert code == 0, text
    lines = screen_lines(text)
    # lora's one trial was done before: its bar is 1/1 from the first frame on, and its best is shown, never "-".
    assert bar_counts(lines, "lora", 1) and set(bar_counts(lines, "lora", 1)) == {1}, text
    assert set(best_cells(lines, "lora")) == {f"{done.metrics.task_metric:.4f}"}, text
    ia3 = bar_counts(lines, "ia3", 1)
    assert ia3[0] == 0 and ia3[-1] == 1, text
    assert "interrupted" not in text

    retried = read_result(run / "trials" / "ia3-1.json")
    assert retried.status == TrialStatus.SUCCESS and retried.retry_of == 0
    assert retried.params == canceled.params and canceled.retry_of is None
    study = optuna.load_study(study_name="tiny-test/ia3", storage=f"sqlite:///{run / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].system_attrs["failed_trial"] == 0


def test_a_log_says_what_a_resumed_run_starts_from() -> None:
    stream = io.StringIO()
    progress = make_progress(["lora", "ia3"], {"lora": 2, "ia3": 1}, stream=stream)
    progress.start({"lora": 0, "ia3": 0}, {"lora": None, "ia3": None})
    assert stream.getvalue() == ""  # a fresh run: nothing to say
    progress.start({"lora": 1, "ia3": 0}, {"lora": 0.75, "ia3": None})
    assert stream.getvalue().rstrip().endswith("resuming: lora 1/2 done (best 0.7500), ia3 0/1 done")


@pytest.mark.slow
def test_gguf_conversion_draws_no_progress_bars_into_a_log(tmp_path: Path) -> None:
    from peftplan.harness.embedded import gguf_path

    try:
        gguf_path()
    except BadInputError as exc:
        pytest.skip(str(exc))
    # Converted into an empty models directory, with stderr a pipe (no terminal); afterwards the bars are back.
    script = """
from peftplan.harness.embedded import embedded_dir
from huggingface_hub.utils import are_progress_bars_disabled
from transformers import modeling_gguf_pytorch_utils as gguf_reader
from transformers.utils import logging
import tqdm.auto
state = lambda: (logging.is_progress_bar_enabled(), are_progress_bars_disabled(), gguf_reader.tqdm is tqdm.auto.tqdm)
before = state()
print(embedded_dir())
print(state() == before)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=170,
                          env={**os.environ, "PEFTPLAN_MODELS_DIR": str(tmp_path / "models"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    converted, restored = done.stdout.strip().splitlines()
    assert (Path(converted) / "model.safetensors").is_file()
    assert restored == "True"
    assert "it/s" not in done.stderr and "%|" not in done.stderr and "\r" not in done.stderr, done.stderr
