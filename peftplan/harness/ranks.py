"""Who runs a trial: one process, or one of N data-parallel ranks that `harness/multigpu.py` launched.

The trial makes the same calls either way (`Ranks`); for one process each is the identity:

- `shard(items)`: this rank's share of the training examples (every N-th, from its rank on);
- `wrap(model)`: DDP (accelerate's `prepare_model`) or FSDP2 (`fully_shard` on each decoder block, then the root);
- `agree(value)`: rank 0's value on every rank (the pruning decision, so that all ranks stop together);
- `gather(value)`: every rank's value, in rank order;
- `trained_model(model, rebuild)`: the trained model on rank 0, None on the others;
- `describe()`: how the ranks ran (the result's `distributed` section, without the ranks' figures);
- `close()`: leave the process group.

FSDP is torch's own `fully_shard`, applied here, not accelerate's FSDP plugin: accelerate 1.15 refuses FSDP1
without a GPU and quietly runs DDP when asked for FSDP2 on CPU, so only this path can run (and be tested) on
CPU ranks over gloo, and it is the same code on GPUs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from peftplan.results import Distributed

if TYPE_CHECKING:
    from torch import nn

    from peftplan.harness.tasks import Encoded

T = TypeVar("T")

_log = logging.getLogger(__name__)


def rank_outcome_name(rank: int) -> str:
    """The outcome file every rank writes; the trial process merges them into `outcome.json`."""
    return f"outcome-rank{rank}.json"


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 outside a launch)."""
    return int(os.environ.get("RANK", "0"))


class Ranks(Protocol):
    """The processes a trial trains in (see the module docstring)."""

    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def parallel(self) -> str:
        """'none' (one process), 'ddp' or 'fsdp'."""
    @property
    def device(self) -> str | None:
        """This rank's own device (e.g. cuda:<local rank>); None: the trial picks it."""
    @property
    def is_main(self) -> bool: ...

    def shard(self, items: Sequence[T]) -> Sequence[T]: ...
    def wrap(self, model: nn.Module) -> nn.Module: ...
    def agree(self, value: T) -> T: ...
    def gather(self, value: T) -> list[T]: ...
    def trained_model(self, model: nn.Module, rebuild: Callable[[], nn.Module]) -> nn.Module | None: ...
    def describe(self) -> Distributed | None: ...
    def close(self) -> None: ...


class SingleProcess:
    """A trial in one process: rank 0 of 1."""

    rank = 0
    world_size = 1
    parallel = "none"
    device: str | None = None
    is_main = True

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        return items

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def agree(self, value: T) -> T:
        return value

    def gather(self, value: T) -> list[T]:
        return [value]

    def trained_model(self, model: nn.Module, rebuild: Callable[[], nn.Module]) -> nn.Module | None:
        return model

    def describe(self) -> Distributed | None:
        return None

    def close(self) -> None:
        pass


class DataParallelRanks:
    """One rank of N: joins the process group through accelerate (gloo on CPU, NCCL on CUDA).

    `timeout` bounds every collective (and the process group's set-up): a rank waits that long for its peers,
    e.g. while rank 0 alone measures the base model before training.
    """

    def __init__(self, parallel: str, *, cpu: bool, timeout: timedelta) -> None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        self.accelerator = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
        self.rank: int = self.accelerator.process_index
        self.world_size: int = self.accelerator.num_processes
        self.parallel = parallel
        self.device: str = str(self.accelerator.device)
        self.sharded_blocks: int | None = None  # FSDP: how many blocks became units of their own

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        return items[self.rank :: self.world_size]

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.parallel == "fsdp":
            return self._fully_shard(model)
        wrapped: nn.Module = self.accelerator.prepare_model(model)  # DDP: gradients all-reduced in backward
        return wrapped

    def _fully_shard(self, model: nn.Module) -> nn.Module:
        """Shard each decoder block, then the root. A model on the CPU is moved to this rank's device block by
        block as it is sharded, so no GPU ever holds the whole model."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.split(":")[0], (self.world_size,))
        blocks = decoder_blocks(model)
        self.sharded_blocks = len(blocks)
        if not blocks:
            _log.warning("rank %s: no decoder blocks (_no_split_modules) found in %s; FSDP shards the whole "
                         "model as one unit, so every forward gathers all of its weights at once",
                         self.rank, type(model).__name__)
        for block in blocks:  # innermost first: FSDP2 needs a child sharded before its parent
            fully_shard(block, mesh=mesh)  # one all-gather per block: only one block's full weights at a time
        fully_shard(model, mesh=mesh)  # embeddings, head and whatever the blocks leave (e.g. prompt embeddings)
        return model

    def agree(self, value: T) -> T:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def trained_model(self, model: nn.Module, rebuild: Callable[[], nn.Module]) -> nn.Module | None:
        """DDP: rank 0's replica is the trained model. FSDP: its full state dict, loaded into `rebuild()`."""
        if self.parallel != "fsdp":
            return model if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # A collective: every rank sends its shards; with cpu_offload only rank 0 keeps the full tensors.
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        fresh = rebuild()
        fresh.load_state_dict(full)
        return fresh

    def describe(self) -> Distributed:
        import torch.distributed as dist

        return Distributed(
            world_size=self.world_size,
            parallel=self.parallel,
            backend=dist.get_backend() if dist.is_initialized() else None,
            distributed_type=str(self.accelerator.distributed_type.value),
            sharded_blocks=self.sharded_blocks,
        )

    def close(self) -> None:
        """Leave the process group; only after this rank finished (NCCL's tear-down may wait for its peers)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (its `_no_split_modules` classes, e.g. LlamaDecoderLayer).

    Innermost first: a match that contains another match is left out (its other weights go to the root's
    unit), so no block is sharded after a block inside it, which FSDP2 does not support.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> bool:
        """Collect the innermost matches under `module`; True if any was found."""
        inner = [visit(child) for child in module.children()]  # a list, not any(): visit every child
        if any(inner):
            return True
        if type(module).__name__ in names:
            found.append(module)
            return True
        return False

    visit(model)
    return found


def trainable_checksum(model: nn.Module) -> float:
    """The sum of every trainable value (float64): equal on every rank when the ranks stayed in sync."""
    return float(sum(_full(p).detach().double().sum() for p in model.parameters() if p.requires_grad))


def even_share(items: Sequence[Encoded], rank: int, world_size: int) -> list[Encoded]:
    """Rank `rank`'s share of `items`, the same count on every rank.

    The list is padded to a multiple of `world_size` with copies whose labels are all ignored (they count no
    tokens), because every rank must run the same number of forwards: FSDP gathers weights in each, and DDP
    broadcasts buffers.
    """
    from peftplan.harness.tasks import IGNORE, Encoded

    if world_size == 1 or not items:
        return list(items)
    padded = list(items)
    while len(padded) % world_size:
        filler = items[len(padded) % len(items)]
        padded.append(Encoded(filler.input_ids, [IGNORE] * len(filler.input_ids)))
    return padded[rank::world_size]


def mean_loss(ranks: Ranks, model: nn.Module, items: Sequence[Encoded], pad: int, *, batch_size: int, device: str,
              autocast: str | None) -> float:
    """Mean per-token loss over `items`, each rank scoring its even share; the same value on every rank."""
    from peftplan.harness.train import loss_sums

    share = even_share(items, ranks.rank, ranks.world_size)
    sums = ranks.gather(loss_sums(model, share, pad, batch_size=batch_size, device=device, autocast=autocast))
    return sum(total for total, _ in sums) / max(1, sum(count for _, count in sums))


def _full(tensor: Any) -> Any:
    """A DTensor (an FSDP-sharded parameter) gathered whole; a plain tensor as it is."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor
