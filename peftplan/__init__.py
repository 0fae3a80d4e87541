"""peftplan: a declarative planner and benchmarking harness for PEFT fine-tuning.

The Python API mirrors the CLI: `peftplan.plan(...)` returns the same Plan `peftplan plan` prints.
Importing the package is cheap; the planner is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftplan.planner.plan import Plan

__all__ = ["plan", "plan_options"]


# The public spelling of the PlanRequest fields named otherwise (grad_ckpt and attn are the CLI's).
_RENAMED = {"grad_checkpointing": "grad_ckpt", "attention": "attn", "model_config": "model_config_dict"}


def plan_options() -> frozenset[str]:
    """The keyword options `plan` takes: PlanRequest's fields in their public spelling, and every stack knob."""
    from peftplan import api
    from peftplan.planner.stacks import KNOB_NAMES

    internal = {"model", "knobs", "require_budget", "given", *_RENAMED.values()}
    return frozenset({*api.PlanRequest.model_fields, *_RENAMED, *KNOB_NAMES} - internal)


def plan(model: str, **options: Any) -> Plan:
    """Plan PEFT fine-tuning of `model` on a budget (`vram` GiB per GPU and/or a `gpu` profile).

    `options` are `peftplan.api.PlanRequest`'s fields, with the CLI's defaults: `gpus`, `shard`,
    `seq_len`, `batch_size`, `optimizer`, `dtype`, `methods` (a name or a list), `rank`, `targets`,
    `tasks`, `switching`, `examples`, `engine`, ... (`grad_checkpointing`, `attention` and `model_config`
    for its `grad_ckpt`, `attn` and `model_config_dict`). `stack` names the training stack whose memory
    techniques are priced (planner/stacks.py); each of its knobs is an option of its own (`loss`,
    `loss_chunks`, `kbit_prep`, `checkpointing` (none/recompute/offload), `offload_activations`,
    `optimizer_in_bwd`, `optimizer_fused`, `packing`, `precision`, `loss_fp32`, `keep_logits`, ...; None: the stack's;
    `grad_checkpointing` None is the stack's too). Without a budget, memory is not limited (fit is not
    judged): a pure prediction. `model_config` plans a config dict under the name `model`; `serve_gpu`,
    `serve_vram`, `serve_context` and `serve_concurrency` describe serving (default: the training GPU,
    `seq_len`, one sequence; one per task up to 32 when multi-tenant); `method_config` is the settings of
    the one method in `methods` (e.g. {"rank": 8, "targets": ["q_proj", "v_proj"]}).

    Returns the Plan: one entry per method (memory breakdown, fits, limits, file size, speed, task
    switching) and a recommendation. `plan(...).to_dict()` is the `--format json` output. `engine`
    "trace" or "both" also runs the traced engine (slow: seconds per method).

    Raises:
        TypeError: an option that is neither a field (in its public spelling) nor a stack knob.
        BadInputError: unknown model, method, target or GPU; an invalid knob (exit code 2 in the CLI).
    """
    from peftplan import api
    from peftplan.planner.stacks import KNOB_NAMES

    allowed = plan_options()
    for name in options:
        if name not in allowed:
            raise TypeError(f"plan() got an unexpected keyword argument {name!r}")
    fields = {_RENAMED.get(name, name): value for name, value in options.items() if name not in KNOB_NAMES}
    if isinstance(fields.get("methods"), str):
        fields["methods"] = [fields["methods"]]
    knobs = {name: options.get(name) for name in KNOB_NAMES}
    return api.plan(api.PlanRequest(model=model, knobs=knobs, require_budget=False, **fields))
