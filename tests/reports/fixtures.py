"""A realistic bench run directory built from the result schema and a real Optuna study.

`make_run_dir(path)` writes what `peftplan bench` leaves behind (the layout of
`peftplan.harness.rundir`) for a small suite on SmolLM2-135M: `run.json` (suite name and hash, storage,
studies), the resolved `suite.json`, `study.db` (one Optuna study per method, named `<suite>/<method>`,
built with Optuna's API), one `trials/<method>-<n>.json` per trial and `results.csv`. Numbers are
hand-made but plausible.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftplan.results import TrialResult, TrialStatus, config_hash, write_result

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SUITE_NAME = "smoke"
MiB = 1024**2


@dataclass
class PlannedTrial:
    status: TrialStatus
    params: dict[str, Any]
    metric: float | None = None
    forgetting: float | None = None
    peak_mib: float | None = None
    intermediate: list[float] = field(default_factory=list)
    error: str | None = None


def low_rank(rank: int, lr: float, targets: str) -> dict[str, Any]:
    """A LoRA-family trial's params, alpha at twice the rank."""
    return {"rank": rank, "alpha": 2 * rank, "lr": lr, "targets": targets}


# Per method: whether it merges, its base memory, decode speed unmerged (base is 40 tok/s), and its trials.
PLAN: dict[str, dict[str, Any]] = {
    "lora": {
        "mergeable": True, "unmerged_tps": 33.0, "adapter_mib": 3.5, "trainable": 1_843_200,
        "trials": [
            PlannedTrial(TrialStatus.SUCCESS, low_rank(16, 1.0e-4, "all-linear"), 0.861, 0.042, 912.0),
            PlannedTrial(TrialStatus.SUCCESS, low_rank(8, 3.0e-4, "attn"), 0.874, 0.051, 868.0),
            PlannedTrial(TrialStatus.PRUNED, low_rank(4, 1.5e-5, "attn"), intermediate=[0.92, 0.88]),
            PlannedTrial(TrialStatus.SUCCESS, low_rank(32, 2.0e-4, "all-linear"), 0.868, 0.066, 951.0),
        ],
    },
    "qlora": {
        "mergeable": False, "unmerged_tps": 21.0, "adapter_mib": 3.5, "trainable": 1_843_200,
        "trials": [
            PlannedTrial(TrialStatus.SUCCESS, low_rank(16, 1.0e-4, "all-linear"), 0.852, 0.047, 611.0),
            PlannedTrial(TrialStatus.OOM, low_rank(64, 2.0e-4, "all-linear"),
                         error="CUDA out of memory: tried to allocate 256.00 MiB (trial memory cap 1.0 GiB)"),
            PlannedTrial(TrialStatus.SUCCESS, low_rank(8, 2.5e-4, "attn"), 0.858, 0.055, 574.0),
        ],
    },
    "ia3": {
        "mergeable": True, "unmerged_tps": 38.0, "adapter_mib": 0.1, "trainable": 27_648,
        "trials": [
            PlannedTrial(TrialStatus.SUCCESS, {"lr": 3.0e-3, "targets": "attn"}, 0.801, 0.004, 803.0),
            PlannedTrial(TrialStatus.TIMEOUT, {"lr": 1.0e-4, "targets": "mlp"},
                         error="trial exceeded its 600 s time limit"),
            PlannedTrial(TrialStatus.SUCCESS, {"lr": 8.0e-3, "targets": "mlp"}, 0.823, 0.009, 815.0),
        ],
    },
    "prompt": {
        "mergeable": False, "unmerged_tps": 36.0, "adapter_mib": 0.06, "trainable": 15_360,
        "trials": [
            PlannedTrial(TrialStatus.SUCCESS, {"lr": 3.0e-2, "virtual_tokens": 20}, 0.712, 0.001, 780.0),
            PlannedTrial(TrialStatus.PRUNED, {"lr": 1.0e-3, "virtual_tokens": 8}, intermediate=[1.41, 1.39]),
            PlannedTrial(TrialStatus.FAILED, {"lr": 5.0e-2, "virtual_tokens": 50},
                         error="RuntimeError: loss is NaN at step 12"),
        ],
    },
}

SUITE = {
    "name": SUITE_NAME,
    "model": {"id": MODEL, "dtype": "bf16"},
    "task": {"kind": "classification", "path": "../shared/data/sst2/train.jsonl"},
    "methods": [
        {"name": "lora", "space": {"rank": [4, 8, 16, 32], "lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True}}},
        {"name": "qlora", "space": {"rank": [8, 16, 64]}, "fixed": {"quant": "nf4"}},
        {"name": "ia3", "space": {"targets": ["attn", "mlp"]}},
        {"name": "prompt", "space": {"virtual_tokens": [8, 20, 50]}},
    ],
    "search": {"trials": 4, "sampler": "tpe", "pruner": "median", "objective": "accuracy"},
    "training": {"steps": 60, "batch_size": 8, "seq_len": 128, "optimizer": "adamw", "seed": 0},
    "budget": {"vram": "24GiB", "trial_time_limit": "600s"},
}


def study_name(method: str) -> str:
    return f"{SUITE_NAME}/{method}"


def _distributions(method: str) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists: dict[str, Any] = {"lr": FloatDistribution(1e-5, 1e-1, log=True)}
    if "rank" in PLAN[method]["trials"][0].params:
        dists["rank"] = CategoricalDistribution([4, 8, 16, 32, 64])
        dists["alpha"] = CategoricalDistribution([8, 16, 32, 64, 128])
    if "targets" in PLAN[method]["trials"][0].params:
        dists["targets"] = CategoricalDistribution(["attn", "mlp", "all-linear"])
    if "virtual_tokens" in PLAN[method]["trials"][0].params:
        dists["virtual_tokens"] = CategoricalDistribution([8, 20, 50])
    return dists


def _write_study(path: Path, study_name: str, method: str) -> None:
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{path}", direction="maximize")
    dists = _distributions(method)
    for planned in PLAN[method]["trials"]:
        state = {TrialStatus.SUCCESS: TrialState.COMPLETE, TrialStatus.PRUNED: TrialState.PRUNED}.get(
            planned.status, TrialState.FAIL
        )
        study.add_trial(create_trial(
            state=state,
            value=planned.metric if state == TrialState.COMPLETE else None,
            params=planned.params,
            distributions=dists,
            intermediate_values={20 * (i + 1): v for i, v in enumerate(planned.intermediate)},
            user_attrs={"method": method, "status": planned.status.value},
        ))


def _provenance(start_minute: int) -> dict[str, Any]:
    return {
        "peftplan_version": "0.1.0",
        "packages": {"torch": "2.13.0", "transformers": "5.2.0", "peft": "0.21.0", "optuna": "5.0.0"},
        "python": "3.11.7",
        "platform": "Linux-x86_64",
        "device": "cpu",
        "device_name": "cpu (2 cores)",
        "hostname": "bench-host",
        "git_commit": "0123abcd",
        "started_at": f"2026-11-20T23:{start_minute:02d}:00+00:00",
        "finished_at": f"2026-11-20T23:{start_minute + 3:02d}:30+00:00",
    }


def _result(method: str, number: int, planned: PlannedTrial, suite_hash: str, model: str, rng: random.Random,
            minute: int, *, task: str, tag: str | None) -> TrialResult:
    """One trial's result, written as its file reads (the schema validates it)."""
    info = PLAN[method]
    params = dict(planned.params)
    if tag is not None and number == 0:  # a user string among the searched params
        params["tag"] = tag
    config = {"method": method, **params, "dropout": 0.05, "training": SUITE["training"]}
    ok = planned.status is TrialStatus.SUCCESS
    metrics = {
        "task_metric": planned.metric,
        "task_metric_name": "accuracy",
        "eval_loss": planned.intermediate[-1] if planned.intermediate else (0.4 if ok else None),
        "train_loss": 0.35 if ok else None,
        "train_tokens_per_s": round(rng.uniform(900, 1300), 1) if ok else None,
        "train_time_s": 140.0 if ok else None,
        "wall_time_s": 190.0,
        "steps": 60 if ok else 40,
        "trainable_params": info["trainable"] * planned.params.get("rank", 16) // 16,
        "total_params": 134_515_008,
        "adapter_bytes": int(info["adapter_mib"] * MiB) if ok else None,
    }
    memory = None
    if planned.peak_mib is not None:
        measured = int(planned.peak_mib * MiB)
        predicted = int(measured * rng.uniform(0.95, 1.06))
        memory = {
            "source": "cpu-livebytes", "peak_allocated": measured, "rss_peak": measured + 400 * MiB,
            "predicted": {"weights": predicted // 2, "adapter": predicted // 50, "peak_allocated": predicted,
                          "reserved": predicted, "overhead": 0, "total": predicted},
            "predicted_engine": "traced",
        }
    latency = None
    if ok:
        latency = {"decode_base": 40.0, "decode_unmerged": info["unmerged_tps"],
                   "decode_merged": 39.6 if info["mergeable"] else None, "prefill_base": 2100.0,
                   "prefill_unmerged": 1800.0, "prefill_merged": 2080.0 if info["mergeable"] else None,
                   "adapter_load_s": 0.05}
    forgetting = None
    if planned.forgetting is not None:
        forgetting = {"probe": "wikitext2-valid", "tokens": 8192, "loss_base": 3.1,
                      "loss_adapted": 3.1 + planned.forgetting, "delta": planned.forgetting}
    return TrialResult.model_validate({
        "suite_name": SUITE_NAME, "suite_hash": suite_hash, "study_name": study_name(method), "model": model,
        "task": task, "method": method, "label": method, "trial_number": number, "params": params, "config": config,
        "config_hash": config_hash(config),
        "status": planned.status, "error": planned.error, "metrics": metrics, "forgetting": forgetting,
        "latency": latency, "memory": memory,
        "intermediate": [{"step": 20 * (i + 1), "eval_loss": v} for i, v in enumerate(planned.intermediate)],
        "provenance": _provenance(minute),
    })


def make_run_dir(path: Path, *, model: str = MODEL, methods: tuple[str, ...] = tuple(PLAN), seed: int = 0,
                 with_study: bool = True, task: str = "sst2", tag: str | None = None) -> Path:
    """Write a complete run directory at `path` and return it.

    Args:
        model, task: What the results name as model and task (tests put hostile strings here).
        methods: Which methods of `PLAN` to include.
        with_study: Also write `study.db`.
        tag: A config value added to each method's first trial (another place for hostile strings).
    """
    import pandas as pd

    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    suite_json = json.dumps(SUITE, indent=2, sort_keys=True)
    (path / "suite.json").write_text(suite_json)
    suite_hash = hashlib.sha256(suite_json.encode()).hexdigest()[:16]
    (path / "run.json").write_text(json.dumps({
        "suite_name": SUITE_NAME, "suite_hash": suite_hash, "suite_file": "suites/smoke.yaml",
        "created_at": "2026-11-20T22:59:00+00:00", "peftplan_version": "0.1.0",
        "storage": f"sqlite:///{(path / 'study.db').resolve()}",
        "studies": {m: study_name(m) for m in methods}, "methods": {m: m for m in methods},
    }, indent=2))
    rows = []
    minute = 0
    for method in methods:
        if with_study:
            _write_study(path / "study.db", study_name(method), method)
        for number, planned in enumerate(PLAN[method]["trials"]):
            result = _result(method, number, planned, suite_hash, model, rng, minute % 55, task=task, tag=tag)
            minute += 4
            write_result(result, path / "trials" / f"{method}-{number}.json")
            rows.append({"method": method, "trial_number": number, "status": result.status.value,
                         "task_metric": result.metrics.task_metric, **planned.params})
    pd.DataFrame(rows).to_csv(path / "results.csv", index=False)
    return path


def expected_results(path: Path) -> list[dict[str, Any]]:
    """The raw result files as dicts, for tests to compare the report's numbers against."""
    return [json.loads(p.read_text()) for p in sorted((path / "trials").glob("*.json"))]


def plan_json(*, model_id: str = "meta-llama/Llama-3.1-8B", vram_gib: float = 24.0) -> dict[str, Any]:
    """A plan object following DESIGN.md's `plan --format json` contract (numbers hand-made)."""
    gib = 1024**3

    def method(name: str, config: dict[str, Any], trainable: int, parts: dict[str, float], *, mergeable: bool,
               overhead: str) -> dict[str, Any]:
        memory = {k: int(parts.get(k, 0.0) * gib) for k in
                  ("weights", "quant_constants", "adapter", "gradients", "optimizer", "activations", "logits")}
        memory["peak_allocated"] = sum(memory.values())
        memory["reserved"] = int(memory["peak_allocated"] * 1.08)
        memory["overhead"] = int(0.6 * gib)
        memory["total"] = memory["reserved"] + memory["overhead"]
        fits = memory["total"] <= vram_gib * gib
        return {"method": name, "config": config, "trainable_params": trainable, "total_params": 8_030_261_248,
                "memory": memory, "predicts": "peak_allocated", "fits": fits,
                "headroom_bytes": int(vram_gib * gib) - memory["total"], "max_batch_size": 4 if fits else 0,
                "max_seq_len": 4096 if fits else 0, "adapter_bytes": memory["adapter"], "mergeable": mergeable,
                "inference_overhead": overhead}

    methods = [
        method("full", {}, 8_030_261_248, {"weights": 14.96, "gradients": 14.96, "optimizer": 59.8,
                                           "activations": 3.1, "logits": 1.96}, mergeable=True, overhead="none"),
        method("lora", {"rank": 16, "alpha": 32, "targets": "all-linear"}, 41_943_040,
               {"weights": 14.96, "adapter": 0.08, "gradients": 0.08, "optimizer": 0.31, "activations": 3.4,
                "logits": 1.96}, mergeable=True, overhead="none once merged"),
        method("qlora", {"rank": 16, "alpha": 32, "targets": "all-linear", "quant": "nf4"}, 41_943_040,
               {"weights": 4.6, "quant_constants": 0.28, "adapter": 0.08, "gradients": 0.08, "optimizer": 0.31,
                "activations": 3.6, "logits": 1.96}, mergeable=False, overhead="dequantization per step"),
        method("ia3", {"targets": "k_proj,v_proj,down_proj"}, 1_179_648,
               {"weights": 14.96, "adapter": 0.002, "gradients": 0.002, "optimizer": 0.01, "activations": 3.2,
                "logits": 1.96}, mergeable=True, overhead="none once merged"),
    ]
    return {
        "model": {"id": model_id, "architecture": "LlamaForCausalLM", "total_params": 8_030_261_248},
        "budget": {"vram_bytes": int(vram_gib * gib), "gpus": 1, "gpu": "RTX 4090"},
        "training": {"seq_len": 2048, "batch_size": 1, "grad_checkpointing": True, "optimizer": "adamw",
                     "dtype": "bf16"},
        "methods": methods,
        "recommendation": {"method": "lora", "config": methods[1]["config"],
                           "reasons": ["fits with 3.2 GiB headroom", "merges: no inference overhead"]},
    }
