"""Who runs a trial: one process, or one of N data-parallel ranks that `harness/multigpu.py` launched.

The trial makes the same calls either way; for one process each is the identity:

- `shard(items)`: this rank's share of the training examples (every N-th, from its rank on);
- `wrap(model)`: DDP (accelerate's `prepare_model`) or FSDP2 (`fully_shard` on each decoder block, then the root);
- `agree(value)`: rank 0's value on every rank (the pruning decision, so that all ranks stop together);
- `gather(value)`: every rank's value, in rank order;
- `trained_model(model, rebuild)`: the trained model on rank 0, None on the others.

FSDP is torch's own `fully_shard`, applied here, not accelerate's FSDP plugin: accelerate 1.15 refuses FSDP1
without a GPU and quietly runs DDP when asked for FSDP2 on CPU, so only this path can run (and be tested) on
CPU ranks over gloo, and it is the same code on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T")


def rank_outcome_name(rank: int) -> str:
    """The outcome file of a rank: rank 0 writes the trial's own `outcome.json`."""
    return "outcome.json" if rank == 0 else f"outcome-rank{rank}.json"


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 outside a launch)."""
    return int(os.environ.get("RANK", "0"))


class SingleProcess:
    """A trial in one process: rank 0 of 1."""

    rank = 0
    world_size = 1
    parallel = "none"
    device: str | None = None  # a rank's own device (cuda:<local rank>); None: the trial picks it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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

    def trainable_checksum(self, model: nn.Module) -> float:
        """The sum of every trainable value (float64): equal on every rank when the ranks stayed in sync."""
        return float(sum(_full(p).detach().double().sum() for p in model.parameters() if p.requires_grad))

    def describe(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass


class DataParallelRanks(SingleProcess):
    """One rank of N: joins the process group through accelerate (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, parallel: str, *, cpu: bool) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=cpu)
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.parallel = parallel
        self.device: str = str(self.accelerator.device)

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        return items[self.rank :: self.world_size]

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.parallel == "fsdp":
            return self._fully_shard(model)
        wrapped: nn.Module = self.accelerator.prepare_model(model)  # DDP: gradients all-reduced in backward
        return wrapped

    def _fully_shard(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.split(":")[0], (self.world_size,))
        for block in decoder_blocks(model):
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

    def describe(self) -> dict[str, Any]:
        import torch.distributed as dist

        return {
            "world_size": self.world_size,
            "parallel": self.parallel,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "distributed_type": str(self.accelerator.distributed_type.value),
        }

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (its `_no_split_modules` classes, e.g. LlamaDecoderLayer)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


def _full(tensor: Any) -> Any:
    """A DTensor (an FSDP-sharded parameter) gathered whole; a plain tensor as it is."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor
