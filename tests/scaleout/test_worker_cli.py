"""`peftplan worker` refuses what it cannot join, with one line and exit 2 (sqlite storage: no server needed)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from peftplan.cli import main


def test_worker_refuses_unknown_and_foreign_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="tiny-test/lora", storage=url)  # a study no peftplan bench started
    code = main(["worker", "--storage", url, "--study", "tiny-tset"])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown study 'tiny-tset'" in err and "Did you mean: tiny-test" in err, err
    code = main(["worker", "--storage", url, "--study", "tiny-test"])
    err = capsys.readouterr().err
    assert code == 2 and "holds no peftplan suite" in err, err
    code = main(["worker", "--storage", "redis://localhost/0", "--study", "tiny-test"])
    err = capsys.readouterr().err
    assert code == 2 and "unsupported storage" in err, err
    assert not list(tmp_path.glob("runs*")) and not Path("runs").joinpath("tiny-test").exists()
