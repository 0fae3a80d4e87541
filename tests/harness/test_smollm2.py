"""One real end-to-end bench on SmolLM2-135M-Instruct (the embedded model): a handful of LoRA steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftplan.errors import BadInputError
from peftplan.results import TrialStatus, read_result
from tests.harness.tiny import write_suite


@pytest.mark.slow
def test_smollm2_bench_end_to_end(tmp_path: Path) -> None:
    from peftplan.harness.embedded import gguf_path

    try:
        gguf_path()
    except BadInputError as exc:
        pytest.skip(str(exc))
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext2" / "test.txt"
    suite = write_suite(tmp_path, {
        "name": "smollm2-e2e",
        "model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "config": None, "tokenizer": None},
        "methods": [{"name": "lora", "fixed": {"rank": 8, "targets": "attn"}}],
        "training": {"steps": 3, "batch_size": 4, "seq_len": 48, "eval_every": 3, "threads": 1},
        "eval": {"task_examples": 8, "loss_examples": 8,
                 "forgetting": {"probe": str(shared), "fallback": "self-sampled", "tokens": 128, "window": 64},
                 "latency": {"prompt_tokens": 8, "new_tokens": 2, "repeats": 1}},
    })
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "peftplan.cli", "bench", str(suite), "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    result = read_result(run / "trials" / "lora-0.json")
    assert result.status == TrialStatus.SUCCESS
    assert result.metrics.total_params == 134_515_008 + result.metrics.trainable_params
    assert result.metrics.steps == 3 and result.metrics.train_tokens_per_s > 0
    assert result.forgetting is not None and result.forgetting.probe in ("wikitext2-test", "self-sampled")
    assert result.latency is not None and result.latency.decode_merged > 0
    memory = result.memory
    assert memory is not None and memory.peak_allocated > 134_515_008 * 2  # bf16 weights at least
    if memory.predicted is not None:  # the planner, when importable, predicts this very step
        assert abs(memory.predicted["peak_allocated"] - memory.peak_allocated) / memory.peak_allocated < 0.10
