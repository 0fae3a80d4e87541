"""The optimizers of `TrainContext.optimizer`, built as a training loop builds them, and their warm-up.

One table says what each name means, so the traced engine, the tests and the harness agree:

- `adamw`: `torch.optim.AdamW(foreach=True)`; its two states follow the parameter dtype. foreach is
  what torch picks by default on CUDA; its step holds one extra copy of `exp_avg_sq` (the sqrt).
- `adamw-fp32`: the same AdamW, but the trainable parameters are kept in fp32 ("master weights",
  see `trace_build.py`), so weights, gradients and both states are fp32; compute stays in `dtype`.
- `adamw8bit` / `paged-adamw8bit`: bitsandbytes' blockwise 8-bit AdamW: two uint8 states plus an fp32
  absmax per 256 values, for tensors of at least 4096 elements (smaller ones keep fp32 states). Paged
  states live in CUDA unified memory, outside the caching allocator and `max_memory_allocated`: the
  trace reports them on their own `paged` line; on CPU bitsandbytes itself falls back to non-paged.
- `paged-adamw`: bitsandbytes' 32-bit PagedAdamW: two fp32 states per parameter, paged.
- `sgd` / `sgd-momentum`: `torch.optim.SGD(foreach=True)`, momentum 0.9 keeps one buffer per parameter.
- `adafactor`: transformers' Adafactor with a fixed learning rate: factored fp32 second moments
  (row and column vectors) for matrices, and fp32 working copies of 16-bit gradients and weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from peftplan.errors import UnknownNameError

if TYPE_CHECKING:
    import torch

__all__ = ["OPTIMIZERS", "build_optimizer", "optimizer_tensors", "warm_up"]

OPTIMIZERS = ("adamw", "adamw-fp32", "adamw8bit", "paged-adamw8bit", "paged-adamw", "sgd", "sgd-momentum",
              "adafactor")
LEARNING_RATE = 1e-4


def build_optimizer(name: str, params: list[torch.nn.Parameter], *, lr: float = LEARNING_RATE,
                    fused: bool = False) -> Any:
    """A fresh optimizer over `params` (`fused`: torch AdamW's fused kernel instead of foreach).

    Build it outside `FakeTensorMode`: bitsandbytes computes its quantization maps from real data.

    Raises:
        UnknownNameError: `name` is not one of `OPTIMIZERS`.
    """
    import torch

    if name in ("adamw", "adamw-fp32"):
        return torch.optim.AdamW(params, lr=lr, fused=True) if fused else torch.optim.AdamW(params, lr=lr, foreach=True)
    if name == "paged-adamw":  # bitsandbytes' 32-bit paged AdamW (litgpt's QLoRA optimizer)
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW(params, lr=lr)
    if name in ("adamw8bit", "paged-adamw8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=True)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    raise UnknownNameError("optimizer", name, OPTIMIZERS)


def warm_up(optimizer: Any, params: Iterable[torch.nn.Parameter]) -> None:
    """Create the optimizer's states as after a first step, so the next step is a steady-state one.

    A step on zero gradients allocates exactly the states a real first step would; then the gradients
    are released the way the trainer does, with `zero_grad(set_to_none=True)`.
    """
    import torch

    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_tensors(optimizer: Any) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps between steps (its states, and bnb's quantization maps)."""
    import torch

    tensors: list[torch.Tensor] = []
    for state in optimizer.state.values():
        tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return tensors
