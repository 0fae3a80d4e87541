"""Which method to pick under the budget and the task-switching needs, and why, in plain sentences.

The rules are the literature's practical defaults:
- LoRA with r=16, alpha=32 on all linear layers, lr 1e-4, is the default recipe;
- rank by data size: below ~20 examples LoRA is hard to train; ~50 to a few hundred: r 1-4;
  tens of thousands: also compare against full fine-tuning; beyond 100k: ranks of 128-512;
- QLoRA when nothing unquantized fits;
- merge the adapter for a single task; hot-swap or serve multi-tenant for many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftplan.planner.plan import MethodPlan

LITERATURE_LR = 1e-4
_GIB = 1 << 30


@dataclass(frozen=True)
class Recommendation:
    method: str | None
    config: dict[str, Any]
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.config, "reasons": list(self.reasons)}


def rank_for_examples(examples: int | None) -> tuple[int | None, str | None]:
    """A LoRA rank suggested by the data size, and the sentence that explains it."""
    if examples is None:
        return None, None
    if examples < 20:
        return None, (f"With {examples} examples LoRA is hard to train (below ~20 examples); consider prompting "
                      "or few-shot examples first.")
    if examples <= 1000:
        return 4, f"With {examples} examples a small rank (r 1-4) is enough and overfits less."
    if examples > 100_000:
        return 128, f"With {examples:,} examples, ranks of 128-512 pay off."
    if examples >= 10_000:
        return None, f"With {examples:,} examples, compare against full fine-tuning if it fits."
    return None, None


def _gib(n: int) -> str:
    return f"{n / _GIB:.1f} GiB"


def recommend(entries: list[MethodPlan], *, tasks: int, switching: str, examples: int | None,
              vram_bytes: int) -> Recommendation:
    """The method to use among `entries` (already planned), with reasons."""
    by_name = {e.method: e for e in entries}
    fitting = [e for e in entries if e.fits]
    if not fitting:
        smallest = min(entries, key=lambda e: e.memory.total, default=None)
        none_fit = ["Nothing fits the budget."]
        if smallest is not None:
            none_fit.append(f"The smallest, {smallest.method}, needs {_gib(smallest.memory.total)} against "
                           f"{_gib(vram_bytes)}: try --grad-ckpt, a shorter --seq-len, --batch-size 1, or more GPUs.")
        return Recommendation(None, {}, none_fit)

    reasons: list[str] = []
    rank, rank_reason = rank_for_examples(examples)
    lora = by_name.get("lora")
    qlora = by_name.get("qlora")
    full = by_name.get("full")
    choice: MethodPlan
    if lora is not None and lora.fits:
        choice = lora
        reasons.append(f"LoRA fits with {_gib(lora.headroom_bytes)} to spare; r=16, alpha=32 on all linear "
                       f"layers with lr {LITERATURE_LR:g} is the literature's default recipe.")
    elif qlora is not None and qlora.fits:
        choice = qlora
        why = f"needs {_gib(lora.memory.total)}" if lora is not None else "is not in the plan"
        reasons.append(f"LoRA on the unquantized base {why}; QLoRA (4-bit NF4 base) fits with "
                       f"{_gib(qlora.headroom_bytes)} to spare, which is what it is for.")
    else:
        choice = max(fitting, key=lambda e: (e.method in ("dora", "qdora", "rslora", "lora", "qlora"), e.headroom_bytes))
        reasons.append(f"{choice.method} fits with {_gib(choice.headroom_bytes)} to spare; the LoRA family "
                       "does not fit or was not asked for.")
    config = dict(choice.config)
    if rank_reason:
        reasons.append(rank_reason)
    if rank is not None and "rank" in config:
        best = rank if choice.max_rank is None else min(rank, choice.max_rank)
        config["rank"], config["alpha"] = best, float(2 * best)
    if examples is not None and examples >= 10_000 and full is not None:
        state = "fits" if full.fits else f"needs {_gib(full.memory.total)}"
        reasons.append(f"Full fine-tuning {state} on this budget.")
    reasons.extend(_switching_reasons(choice, tasks, switching))
    config.setdefault("lr", LITERATURE_LR)
    return Recommendation(choice.method, config, reasons)


def _switching_reasons(choice: MethodPlan, tasks: int, switching: str) -> list[str]:
    sw = choice.task_switching
    if tasks <= 1 or switching == "merge":
        if choice.mergeable:
            return ["For a single task, merge the adapter after training: no inference overhead."]
        return [f"{choice.method} cannot be merged, so it keeps its inference overhead ({choice.inference_overhead})."]
    saved = sw["full_copies_bytes"] - sw["storage_bytes"]
    text = (f"{tasks} tasks take {_gib(sw['storage_bytes'])} on disk instead of {_gib(sw['full_copies_bytes'])} "
            f"for full copies (saves {_gib(saved)}).")
    if switching == "multi-tenant":
        return [text, f"Multi-tenant serving keeps the base and all {tasks} adapters resident: "
                      f"{_gib(sw['serving_bytes'])} of weights."]
    return [text, f"Hot-swapping adapters takes about {sw['swap_seconds'] * 1000:.0f} ms per switch."]
