"""Optional lm-eval forgetting tasks: scores of an in-memory model (peft-wrapped too), per task.

Local task YAML files (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`) load from
`include_path`; named tasks need the network. See STACK.md for the offline recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.suite import LmEvalSection, LoadedSuite

_PREFERRED = ("acc_norm,none", "acc,none", "exact_match,none", "exact_match,strict-match")


def headline_metric(values: dict[str, Any]) -> tuple[str, float] | None:
    """The metric a task is judged by: acc_norm, acc, exact_match, else its first numeric one."""
    for key in _PREFERRED:
        if isinstance(values.get(key), int | float):
            return key, float(values[key])
    for key, value in values.items():
        if isinstance(value, int | float) and "stderr" not in key:
            return key, float(value)
    return None


def lm_eval_scores(model: nn.Module, tokenizer: Any, section: LmEvalSection, loaded: LoadedSuite, device: str) -> dict[str, float]:
    """`{"task/metric": value}` for every configured task on `model` as it is now."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    include = str(loaded.resolve_path(section.include_path)) if section.include_path else None
    manager = TaskManager(include_path=include) if include else TaskManager()
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=section.batch_size, device=device)
        output = simple_evaluate(model=lm, tasks=list(section.tasks), task_manager=manager, limit=section.limit,
                                 log_samples=False)
    except (KeyError, ValueError) as exc:
        raise BadInputError(f"eval.lm_eval: {exc}") from None
    finally:
        model.train(was_training)
    scores = {}
    for task, values in (output or {}).get("results", {}).items():
        found = headline_metric(values)
        if found is not None:
            scores[f"{task}/{found[0].split(',')[0]}"] = found[1]
    return scores
