"""What a trial runs: its spec (`spec.json`, written by the runner), the context every part of it shares, and
the run's data as this rank reads it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.channel import TrialChannel
    from peftplan.harness.data import TaskInfo
    from peftplan.harness.ranks import Ranks
    from peftplan.harness.suite import LoadedSuite, Suite
    from peftplan.harness.tasks import Encoded, PromptFormatter
    from peftplan.methods.base import Method, MethodConfig

SPEC = "spec.json"


class TrialSpec(BaseModel):
    """Everything a trial subprocess needs; written by the runner as `spec.json`."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    suite: dict[str, Any]
    suite_dir: str
    method_key: str
    method: str
    method_config: dict[str, Any]
    lr: float
    trial_number: int
    pruning: bool
    weights: dict[str, Any]
    threads: int | None = None  # torch CPU threads; None: torch's default
    seed: int | None = None  # the method's initial weights and the batch order; None: training.seed + trial_number

    @property
    def quant(self) -> str:
        """The base's bitsandbytes quantization (QLoRA and friends), or 'none'."""
        return str(self.method_config.get("quant") or "none")


def loaded_suite(spec: TrialSpec) -> LoadedSuite:
    from peftplan.harness.suite import LoadedSuite, Suite

    suite_dir = Path(spec.suite_dir)
    return LoadedSuite(Suite.model_validate(spec.suite), suite_dir / "suite.yaml", suite_dir)


@dataclass
class TrialContext:
    """What every part of a trial needs: its spec and suite, where it runs, the tokenizer and the method."""

    spec: TrialSpec
    loaded: LoadedSuite
    device: str
    autocast: str | None
    channel: TrialChannel
    tokenizer: Any
    method: Method[Any]
    cfg: MethodConfig

    @property
    def suite(self) -> Suite:
        return self.loaded.suite

    @property
    def run_dir(self) -> Path:
        return Path(self.spec.run_dir)

    @property
    def seed(self) -> int:
        """The trial's seed: the suite's seed plus the trial number, unless the spec gives one (confirmation runs)."""
        return self.spec.seed if self.spec.seed is not None else self.suite.training.seed + self.spec.trial_number

    def apply(self, base: nn.Module) -> nn.Module:
        """The method on `base`, its random initial weights fixed by the trial's seed (so every rank, and every
        rebuild, starts equal)."""
        import torch

        torch.manual_seed(self.seed)
        return self.method.apply(base, self.cfg)

    def fresh_base(self) -> nn.Module:
        """Another copy of the base model, on this process's device."""
        from peftplan.harness.loading import WeightsSource, load_base

        base, _ = load_base(WeightsSource(**self.spec.weights), self.suite.model, self.loaded, device=self.device,
                            seed=self.suite.training.seed, quant=self.spec.quant)
        return base


class AdapterSwitch(Protocol):
    """A peft model's adapter controls: turn the adapter off, load another, switch between them."""

    def disable_adapter(self) -> contextlib.AbstractContextManager[Any]: ...
    def load_adapter(self, model_id: str, adapter_name: str) -> Any: ...
    def set_adapter(self, adapter_name: str) -> None: ...
    def delete_adapter(self, adapter_name: str) -> None: ...


def adapter_switch(model: nn.Module) -> AdapterSwitch | None:
    """The model's adapter switch: peft models can turn their adapter off; hand-written methods cannot (None)."""
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        return cast("AdapterSwitch", model)
    return None


@dataclass
class TrialData:
    """The run's data split, encoded: every rank reads the same, then trains on its share."""

    info: TaskInfo
    formatter: PromptFormatter
    all_train: list[Encoded]
    train_items: list[Encoded]  # this rank's share
    loss_items: list[Encoded]  # the intermediate eval loss
    scored: list[Any]  # examples for the task metric
    pad: int
    latency_prompt: list[int]


def read_data(ctx: TrialContext, ranks: Ranks) -> TrialData:
    from peftplan.harness.checks import check_rank_shares
    from peftplan.harness.data import read_task
    from peftplan.harness.tasks import PromptFormatter, pad_id

    suite = ctx.suite
    task = read_task(ctx.run_dir / "data")
    formatter = PromptFormatter(ctx.tokenizer, task.info, suite.training.seq_len)
    with_eos = task.info.kind == "generation"
    all_train = [formatter.encode(e, with_eos=with_eos) for e in task.train]
    if ranks.world_size > 1:
        check_rank_shares(suite.training, len(all_train))  # every rank alike, so all of them stop
    return TrialData(
        info=task.info,
        formatter=formatter,
        all_train=all_train,
        train_items=list(ranks.shard(all_train)),  # several ranks: each trains on its own share
        loss_items=[formatter.encode(e, with_eos=with_eos) for e in task.eval[: suite.eval.loss_examples]],
        scored=task.eval[: suite.eval.task_examples],
        pad=pad_id(ctx.tokenizer),
        latency_prompt=_latency_prompt(formatter, task.eval),
    )


def _latency_prompt(formatter: Any, examples: list[Any]) -> list[int]:
    ids: list[int] = []
    for example in examples:
        ids += formatter.prompt_ids(example.prompt)
        if len(ids) >= 4096:
            break
    return ids
