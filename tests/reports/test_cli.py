"""`peftplan report`: what it writes, and bad input (exit 2, one line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from peftplan.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_html_and_markdown(capsys, run_dir: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "report", str(run_dir), "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert out.split() == [str(tmp_path / "r" / "report.html"), str(tmp_path / "r" / "report.md")]
    assert (tmp_path / "r" / "figures" / "pareto.png").is_file()


def test_one_format_and_the_default_out_dir(capsys, run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    code, out, _ = run(capsys, "report", str(copy), "--format", "html")
    assert code == 0 and out.split() == [str(copy / "report" / "report.html")]
    assert not (copy / "report" / "report.md").exists()


def test_merges_several_run_directories(capsys, run_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "worker-a", tmp_path / "worker-b"
    for i, file in enumerate(sorted((run_dir / "trials").glob("*.json"))):
        target = (a if i % 2 else b) / "trials"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, target)
    code, _, err = run(capsys, "report", str(a), str(b), "--storage", f"sqlite:///{run_dir / 'study.db'}",
                       "--out", str(tmp_path / "merged"), "--format", "md")
    assert code == 0, err
    text = (tmp_path / "merged" / "report.md").read_text()
    assert "| run " in text and "worker-a" in text and "worker-b" in text
    assert "13: 8 success" in text and "history-lora.png" in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["report", "/no/such/run"], "does not exist"),
        (["report", "{tmp}"], "holds no trial results"),
        (["report", "{run}", "--format", "pdf"], "Unknown format 'pdf'"),
        (["report"], "Missing argument"),
        (["report", "{run}", "--out", "/proc/peftplan-cannot-write"], "cannot create output directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, run_dir: Path, tmp_path: Path, argv: list[str],
                                          expected: str) -> None:
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_a_run_where_nothing_succeeded(capsys, run_dir: Path, tmp_path: Path) -> None:
    import json

    trials = tmp_path / "run" / "trials"
    trials.mkdir(parents=True)
    for file in sorted((run_dir / "trials").glob("*.json")):
        data = json.loads(file.read_text())
        data.update(status="failed", error="RuntimeError: boom", metrics={}, forgetting=None, latency=None,
                    memory=None, params={}, label=None)
        (trials / file.name).write_text(json.dumps(data))
    code, _, err = run(capsys, "report", str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert code == 0, err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "13: 0 success, 0 pruned, 0 oom, 13 failed, 0 timeout" in text
    assert text.count("no successful trial") == 4 and "## Plots" not in text
    assert "RuntimeError: boom" in (tmp_path / "out" / "report.html").read_text()
