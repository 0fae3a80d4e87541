"""lm-eval forgetting on a local task YAML (offline), and the two progress displays."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from peftplan.harness.progress import LineProgress, RichProgress, make_progress


def test_lm_eval_scores_a_local_task_on_an_in_memory_model(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    import torch

    from peftplan.harness.lmeval import lm_eval_scores
    from peftplan.harness.loading import byte_tokenizer
    from peftplan.harness.suite import LmEvalSection, LoadedSuite, parse_suite
    from peftplan.models.build import build_model
    from tests.harness.tiny import TINY_MODEL, TINY_SUITE

    rows = [{"question": f"{i} plus one is", "choices": [f" {i + 1}", f" {i + 7}"], "label": 0} for i in range(6)]
    (tmp_path / "probe.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_probe.yaml").write_text(
        "task: tiny_probe\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'probe.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\n"
        "target_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, device="cpu", dtype=torch.float32)
    loaded = LoadedSuite(parse_suite(TINY_SUITE), tmp_path / "suite.yaml", tmp_path)
    section = LmEvalSection(tasks=["tiny_probe"], include_path="tasks", limit=6, batch_size=4)
    scores = lm_eval_scores(model, byte_tokenizer(), section, loaded, "cpu")
    assert set(scores) == {"tiny_probe/acc"} and 0.0 <= scores["tiny_probe/acc"] <= 1.0


def test_line_progress_is_quiet_and_line_based() -> None:
    stream = io.StringIO()
    progress = make_progress(["lora"], {"lora": 2}, stream=stream)
    assert isinstance(progress, LineProgress)
    progress.trial_started("lora", 0, {"rank": 8, "lr": 1e-4}, 10)
    for step in range(1, 10):
        progress.trial_event("lora", 0, {"event": "step", "step": step, "loss": 1.0})
    progress.trial_event("lora", 0, {"event": "eval", "step": 10, "eval_loss": 0.5})
    progress.trial_finished("lora", 0, "success", 0.9, 0.9)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # started, eval, finished: step lines are rate-limited
    assert "rank=8 lr=0.0001" in lines[0] and "success: metric 0.9000 (best lora: 0.9000)" in lines[2]


def test_rich_progress_shows_steps_and_best_so_far() -> None:
    progress = RichProgress(["lora", "ia3"], {"lora": 2, "ia3": 1})
    progress.console.file = io.StringIO()
    progress.trial_started("lora", 0, {"rank": 8}, 4)
    progress.trial_event("lora", 0, {"event": "phase", "name": "train", "steps": 4})
    progress.trial_event("lora", 0, {"event": "step", "step": 2, "loss": 0.7})
    progress.trial_finished("lora", 0, "success", 0.8, 0.8)
    assert progress.best == {"lora": 0.8, "ia3": None}
    progress.close()
