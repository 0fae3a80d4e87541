"""The result file every bench trial writes (`trials/<method>-<n>.json`): the contract reports read.

The harness fills it (a trial's typed outcome, `harness/trial/outcome.py`, is made of these parts, under
the same field names) and writes it; reports only read it. Fields may be added (bump nothing); renaming or
removing one needs `SCHEMA_VERSION` + 1 and a reader that still accepts the old files.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class TrialStatus(str, Enum):  # noqa: UP042 - readers compare and format it as a plain str
    SUCCESS = "success"
    PRUNED = "pruned"
    OOM = "oom"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELED = "canceled"


class _Strict(BaseModel):
    """Unknown fields are errors; a value assigned later (a trial fills its outcome as it goes) is validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Forgetting(_Strict):
    """Held-out general-text loss, adapter disabled (base) against enabled (adapted).

    A value that was not measured is None, never 0: with only lm-eval probes (`probe: 'lm-eval'`) there is no
    probe loss, and `delta` is None.
    """

    probe: str = Field(description="Which text: e.g. 'wikitext2-valid', 'self-sampled' when none was available, "
                       "or 'lm-eval' when only lm-eval tasks were scored.")
    tokens: int | None = None
    loss_base: float | None = None
    loss_adapted: float | None = None
    delta: float | None = Field(None, description="loss_adapted - loss_base; positive means forgetting.")
    delta_ci: list[float] | None = Field(None, description="95% interval of delta: a paired bootstrap over the "
                                         "probe's windows.")
    lm_eval: dict[str, float] = Field(default_factory=dict, description="Task -> metric delta against the base.")
    lm_eval_ci: dict[str, list[float]] = Field(default_factory=dict, description="Task -> 95% interval of its "
                                               "delta (paired bootstrap over lm-eval's documents).")
    base_reference: str | None = Field(
        None, description="'adapter-disabled' (peft methods) or 'before-training' (methods without a switch)."
    )


class Latency(_Strict):
    """Tokens per second; None where not measured (e.g. merged for an unmergeable method).

    Each speed is tokens over the mean of repeated timings; `<field>_ci` is its 95% interval (Student's t over
    the repeats), and `repeats` how many were needed to bring every interval of a variant within ±5% (or the cap).
    An interval `[low, null]` has no upper bound: the repeats were too noisy to bound the time away from zero.
    """

    prefill_base: float | None = None
    prefill_unmerged: float | None = None
    prefill_merged: float | None = None
    decode_base: float | None = None
    decode_unmerged: float | None = None
    decode_merged: float | None = None
    adapter_load_s: float | None = None
    swap_s: float | None = None
    prefill_base_ci: list[float | None] | None = None
    prefill_unmerged_ci: list[float | None] | None = None
    prefill_merged_ci: list[float | None] | None = None
    decode_base_ci: list[float | None] | None = None
    decode_unmerged_ci: list[float | None] | None = None
    decode_merged_ci: list[float | None] | None = None
    repeats: dict[str, int] = Field(default_factory=dict, description="Variant (base, unmerged, merged) -> "
                                    "timing repeats taken.")


class RankMemory(_Strict):
    """One rank's measured peak in a multi-GPU trial."""

    rank: int
    source: str
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    rss_peak: int | None = None
    measured_batch: int | None = Field(None, description="Micro-batch size of this rank's measured step.")
    measured_seq_len: int | None = Field(None, description="Padded sequence length of this rank's measured step "
                                         "(each rank pads to its own longest example).")
    predicted_peak_allocated: int | None = Field(None, description="The planner's per-GPU peak for this rank's "
                                                 "measured shape.")


class MemoryMeasurement(_Strict):
    """The measured peak next to the planner's prediction for the same config."""

    source: str = Field(description="'cuda' (max_memory_allocated) or 'cpu-livebytes' (live-bytes tracker).")
    peak_allocated: int | None = Field(None, description="Several ranks: the highest rank's peak (per GPU); "
                                       "predicted and measured_* are for that rank.")
    peak_reserved: int | None = None
    rss_peak: int | None = None
    predicted: dict[str, int] | None = Field(
        None, description="The planner's MemoryBreakdown (bytes), per GPU: sharded over the ranks for FSDP."
    )
    predicted_engine: str | None = None
    prediction_error: str | None = Field(None, description="Why `predicted` is missing: the planner's exception "
                                         "(`Type: message`), e.g. a setting it does not model, or a bug.")
    measured_batch: int | None = Field(None, description="Micro-batch size of the measured step (per rank).")
    measured_seq_len: int | None = Field(None, description="Padded sequence length of the measured step.")
    ranks: list[RankMemory] | None = Field(None, description="Several ranks: each rank's own peak, in rank order.")


class RankTraining(_Strict):
    """One rank's share of a multi-GPU trial's training."""

    rank: int
    train_tokens: int
    train_time_s: float
    train_loss: float | None = None
    trainable_checksum: float = Field(description="Sum of the trainable values after training; equal on every "
                                      "rank when the ranks stayed in sync.")


class Distributed(_Strict):
    """How a multi-GPU trial ran (`training.gpus` > 1)."""

    world_size: int
    parallel: str = Field(description="'ddp' or 'fsdp'.")
    backend: str | None = Field(None, description="torch.distributed backend: 'nccl' on GPUs, 'gloo' on CPU.")
    distributed_type: str | None = Field(None, description="accelerate's mode, e.g. MULTI_GPU or MULTI_CPU.")
    sharded_blocks: int | None = Field(None, description="FSDP: decoder blocks sharded as units of their own "
                                       "(0: the whole model was one unit, gathered whole in every forward).")
    ranks: list[RankTraining] = Field(default_factory=list)


class Metrics(_Strict):
    task_metric: float | None = None
    task_metric_ci: list[float] | None = Field(None, description="95% bootstrap interval over the scored examples.")
    task_metric_name: str | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    train_tokens_per_s: float | None = None
    train_tokens_per_s_ci: list[float] | None = Field(None, description="95% bootstrap interval over the training "
                                                      "steps (single-process trials).")
    train_time_s: float | None = None
    wall_time_s: float | None = None
    steps: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    adapter_bytes: int | None = None
    task_metrics: dict[str, float] = Field(default_factory=dict, description="Every task metric, e.g. macro_f1.")
    task_metrics_ci: dict[str, list[float]] = Field(default_factory=dict, description="Each task metric's 95% "
                                                    "bootstrap interval.")
    train_tokens: int | None = None
    startup_s: float | None = Field(None, description="Trial process start and imports (per-trial overhead).")
    load_time_s: float | None = Field(None, description="Base model and tokenizer load (per-trial overhead).")
    threads: int | None = Field(None, description="torch CPU threads the trial trained with.")
    seed: int | None = Field(None, description="The seed of the method's initial weights and the batch order "
                             "(training.seed + trial number; a confirmation run's own seed).")


class Provenance(_Strict):
    peftplan_version: str
    packages: dict[str, str]
    python: str
    platform: str
    device: str = Field(description="'cpu' or 'cuda:N'.")
    device_name: str
    hostname: str
    git_commit: str | None = None
    started_at: str
    finished_at: str | None = None


class IntermediateValue(_Strict):
    step: int
    eval_loss: float


class TrialResult(_Strict):
    """One trial of a bench run."""

    schema_version: int = SCHEMA_VERSION
    suite_name: str
    suite_hash: str
    study_name: str
    model: str
    task: str
    method: str
    trial_number: int
    config: dict[str, Any] = Field(description="The fully resolved method + training config of this trial.")
    config_hash: str
    label: str | None = Field(None, description="The suite's label for this method entry (names the file).")
    params: dict[str, Any] = Field(default_factory=dict, description="The Optuna params sampled for this trial.")
    retry_of: int | None = Field(None, description="The trial number this one re-runs (its runner died).")
    confirm_of: int | None = Field(None, description="A confirmation run (`search.confirm`): the number of the "
                                   "search trial whose configuration it re-runs with another seed.")
    status: TrialStatus
    error: str | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    forgetting: Forgetting | None = None
    latency: Latency | None = None
    memory: MemoryMeasurement | None = None
    distributed: Distributed | None = Field(None, description="Set for multi-GPU trials only.")
    intermediate: list[IntermediateValue] = Field(default_factory=list)
    provenance: Provenance


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a resolved config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_result(result: TrialResult, path: Path) -> None:
    """Write atomically (synced to disk): a reader sees the old file or the whole new one, never half of it."""
    from peftplan.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, result.model_dump_json(indent=2), fsync=True)


def read_result(path: Path) -> TrialResult:
    return TrialResult.model_validate_json(path.read_text())
