"""The multi-GPU trial path, run here as 2 CPU processes on gloo through a real `accelerate launch`."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.harness.multigpu import launch_data_parallel
from tests.harness.tiny import TINY_MODEL


@pytest.mark.timeout(180)
def test_two_cpu_ranks_train_in_sync_and_record_peaks_next_to_the_prediction(tmp_path: Path) -> None:
    spec = {"device": "cpu", "seed": 0, "model_config": TINY_MODEL, "method": "lora",
            "method_config": {"rank": 4, "targets": "all-linear"}, "lr": 1e-2, "steps": 3, "batch_size": 2,
            "seq_len": 16}
    report = launch_data_parallel(spec, tmp_path, processes=2, timeout=150)
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["distributed_type"] == "MULTI_CPU"
    ranks = report["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["peak_allocated"] > 0 and r["source"] == "cpu-livebytes" for r in ranks)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank trained on its own shard ...
    assert ranks[0]["adapter_checksum"] == pytest.approx(ranks[1]["adapter_checksum"], rel=1e-9)  # ... in sync
    predicted = report["predicted_per_gpu"]
    assert predicted["peak_allocated"] > 0 and predicted["adapter"] > 0
