"""`methods: auto` in a suite: the plan's recommended shortlist for the suite's model, budget and training.

The plan's decision (planner/decide.py) ranks whole configurations; the shortlist is its top candidates
that fit, each benchmarked at its recommended settings (`fixed`), the learning rate searched. The suite's
training section pins what the plan may not change (sequence length, micro-batch, checkpointing,
optimizer, GPUs and parallelism), and its memory budget (`budget.vram`, else `budget.memory_cap`) is the
plan's; without one, nothing is ruled out by memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftplan.harness.suite import BudgetSection, ModelSection, TrainingSection

# PlanRequest's fields a suite's training section fixes (the decision keeps them as given).
_PINNED = frozenset({"seq_len", "batch_size", "grad_ckpt", "optimizer", "shard", "gpus"})


def auto_methods(model: ModelSection, training: TrainingSection, budget: BudgetSection) -> list[dict[str, Any]]:
    """Method entries (`name`, `fixed`) for the recommended shortlist.

    Raises:
        ValueError: the model cannot be planned, or no configuration fits the budget.
    """
    from peftplan.api import PlanRequest
    from peftplan.api import plan as make_plan
    from peftplan.errors import PeftplanError
    from peftplan.harness.embedded import EMBEDDED_ID, is_embedded
    from peftplan.harness.train import HARNESS_KNOBS

    model_id = EMBEDDED_ID if is_embedded(model.id) and model.config is None else model.id
    limit = budget.vram or budget.memory_cap
    try:
        plan = make_plan(PlanRequest(
            model=model.display_id if model.config is not None else model_id, model_config_dict=model.config,
            vram=None if limit is None else limit / (1 << 30), gpus=training.gpus,
            shard="fsdp" if training.parallel == "fsdp" else "none", seq_len=training.seq_len,
            batch_size=training.batch_size, grad_ckpt=training.grad_checkpointing, optimizer=training.optimizer,
            dtype=training.precision if training.precision in ("bf16", "fp16", "fp32") else "bf16",
            require_budget=False, fit_search=False, trust_remote_code=model.trust_remote_code, given=_PINNED,
            knobs=dict(HARNESS_KNOBS),
        ))
    except PeftplanError as exc:
        raise ValueError(f"methods: auto could not plan {model.display_id}: {exc}") from None
    entries = []
    for cand in plan.recommendation.candidates:
        quantized = cand["config"].get("quant", "none") != "none"
        if not cand["fits"] or (quantized and training.parallel == "fsdp"):
            continue  # FSDP cannot shard a bitsandbytes base (see Suite._fsdp_needs_unquantized_weights)
        entries.append({"name": cand["method"], "fixed": {k: v for k, v in cand["config"].items() if k != "lr"}})
    if not entries:
        raise ValueError(f"methods: auto found no configuration of {model.display_id} that fits the budget; "
                         "list the methods instead")
    return entries
