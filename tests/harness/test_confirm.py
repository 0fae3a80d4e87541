"""`search.confirm: {top: k, seeds: n}`: after a method's search, its k best configurations run again with n new
seeds each (their own study and result files), and a re-run of the bench adds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftplan.errors import BadInputError
from peftplan.harness.suite import parse_suite
from peftplan.results import TrialStatus, read_result
from tests.harness.tiny import TINY_SUITE, deep_update, write_suite


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftplan.cli", "bench", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_confirmation_runs_rerun_the_top_configurations_with_new_seeds(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {
        "methods": [{"name": "lora", "trials": 2, "enqueue": [{"lr": 0.02}, {"lr": 1.0e-6}],
                     "fixed": {"rank": 4, "targets": "all-linear", "dropout": 0.0, "alpha_ratio": 2}}],
        "search": {"recipe": False, "pruner": {"kind": "none"}, "confirm": {"top": 1, "seeds": 2}},
        "training": {"steps": 4, "eval_every": 2, "threads": 1},
        "eval": {"forgetting": None, "latency": None, "task_examples": 16, "loss_examples": 8},
    })
    run = tmp_path / "run"
    done = bench(str(suite), "--run-dir", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    found = {p.stem: read_result(p) for p in sorted((run / "trials").glob("*.json"))}
    assert set(found) == {"lora-0", "lora-1", "lora+confirm-0", "lora+confirm-1"}
    search = [found["lora-0"], found["lora-1"]]
    best = max(search, key=lambda r: (r.metrics.task_metric, -r.trial_number))
    confirmations = [found["lora+confirm-0"], found["lora+confirm-1"]]
    for result in confirmations:
        assert result.status == TrialStatus.SUCCESS and result.label == "lora"
        assert result.confirm_of == best.trial_number and result.params == best.params
        assert result.study_name == "tiny-test/lora+confirm" and result.metrics.steps == 4
    seeds = {r.metrics.seed for r in confirmations} | {r.metrics.seed for r in search}
    assert len(seeds) == 4  # every run its own seed
    assert all(r.confirm_of is None for r in search)
    # Running the suite again finds everything done, the confirmation runs included.
    again = bench(str(suite), "--run-dir", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((run / "trials").glob("*.json"))) == 4


def test_confirm_settings_are_validated_and_leave_old_suite_hashes_alone() -> None:
    from peftplan.harness.suite import LoadedSuite

    plain = LoadedSuite(parse_suite(TINY_SUITE), Path("s.yaml"), Path("."))
    assert "confirm" not in plain.normalized()["search"]  # unset: the hash of runs made before it is unchanged
    confirmed = parse_suite(deep_update(TINY_SUITE, {"search": {"confirm": {"top": 2, "seeds": 3}}}))
    assert (confirmed.search.confirm.top, confirmed.search.confirm.seeds) == (2, 3)
    with pytest.raises(BadInputError, match=r"search\.confirm\.sedes: unknown key\. Did you mean: seeds\?"):
        parse_suite(deep_update(TINY_SUITE, {"search": {"confirm": {"sedes": 3}}}))
    with pytest.raises(BadInputError, match=r"search\.confirm\.top: Input should be greater than or equal to 1"):
        parse_suite(deep_update(TINY_SUITE, {"search": {"confirm": {"top": 0}}}))
