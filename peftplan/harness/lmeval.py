"""Optional lm-eval forgetting tasks: scores of an in-memory model (peft-wrapped too), per task.

Local task YAML files (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`) load from
`include_path`; named tasks need the network. See STACK.md for the offline recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class LmEvalRun:
    """Scores `{"task/metric": value}` and, for intervals, each score's value per document `{doc_id: value}`."""

    scores: dict[str, float]
    per_doc: dict[str, dict[int, float]] = field(default_factory=dict)


def lm_eval_scores(model: nn.Module, tokenizer: Any, section: LmEvalSection, loaded: LoadedSuite, device: str) -> dict[str, float]:
    """`{"task/metric": value}` for every configured task on `model` as it is now."""
    return lm_eval_run(model, tokenizer, section, loaded, device).scores


def lm_eval_run(model: nn.Module, tokenizer: Any, section: LmEvalSection, loaded: LoadedSuite, device: str) -> LmEvalRun:
    """Every configured task on `model` as it is now, with per-document values (lm-eval's logged samples)."""
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
                                 log_samples=True)
    except (KeyError, ValueError) as exc:
        raise BadInputError(f"eval.lm_eval: {exc}") from None
    finally:
        model.train(was_training)
    run = LmEvalRun({})
    samples = (output or {}).get("samples") or {}
    for task, values in (output or {}).get("results", {}).items():
        found = headline_metric(values)
        if found is None:
            continue
        metric, _, filter_name = found[0].partition(",")
        key = f"{task}/{metric}"
        run.scores[key] = found[1]
        per_doc = {int(s["doc_id"]): float(s[metric]) for s in samples.get(task, [])
                   if s.get("filter", "none") == (filter_name or "none") and isinstance(s.get(metric), int | float)}
        if per_doc:
            run.per_doc[key] = per_doc
    return run
