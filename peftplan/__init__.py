"""peftplan: a declarative planner and benchmarking harness for PEFT fine-tuning.

The Python API mirrors the CLI: `peftplan.plan(...)` returns the same Plan `peftplan plan` prints.
Importing the package is cheap; the planner is imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftplan.planner.plan import Plan

__all__ = ["plan"]


def plan(
    model: str,
    *,
    vram: float | None = None,
    gpu: str | None = None,
    gpus: int = 1,
    shard: str = "none",
    cpu_offload: bool = False,
    stack: str = "hf",
    loss: str | None = None,
    loss_chunks: int | None = None,
    loss_chunk_tokens: int | None = None,
    loss_recompute: bool | None = None,
    adapter_dtype: str | None = None,
    kernels: str | None = None,
    kbit_prep: str | None = None,
    checkpointing: str | None = None,
    offload_activations: bool | None = None,
    optimizer_in_bwd: bool | None = None,
    packing: bool | None = None,
    precision: str | None = None,
    loss_fp32: bool | None = None,
    keep_logits: bool | None = None,
    legacy_loss: bool | None = None,
    compile_loss: bool | None = None,
    bnb_keeps_input: bool | None = None,
    bnb_fp16_state: bool | None = None,
    lengths: str | Path | None = None,
    tokenizer: str | None = None,
    methods: list[str] | str | None = None,
    seq_len: int = 2048,
    batch_size: int = 1,
    grad_checkpointing: bool | None = None,
    optimizer: str | None = None,
    dtype: str = "bf16",
    attention: str = "sdpa",
    device: str = "cuda",
    rank: int | None = None,
    alpha: float | None = None,
    targets: str | None = None,
    virtual_tokens: int | None = None,
    quant: str | None = None,
    bottleneck: int | None = None,
    peft_config: str | Path | None = None,
    tasks: int = 1,
    switching: str = "merge",
    serve_gpu: str | None = None,
    serve_vram: float | None = None,
    serve_context: int | None = None,
    serve_concurrency: int | None = None,
    examples: int | None = None,
    train_tokens: int | None = None,
    epochs: float = 1.0,
    mfu: float = 0.40,
    fit_search: bool = True,
    gpu_profiles: str | Path | None = None,
    engine: str = "analytic",
    model_config: dict[str, Any] | None = None,
    method_config: dict[str, Any] | None = None,
) -> Plan:
    """Plan PEFT fine-tuning of `model` on a budget (`vram` GiB per GPU and/or a `gpu` profile).

    `stack` names the training stack whose memory techniques are priced (planner/stacks.py); `loss`,
    `loss_chunks`, `kbit_prep`, `checkpointing` (none/recompute/offload), `offload_activations`,
    `optimizer_in_bwd`, `packing`, `precision`, `loss_fp32` and `keep_logits` override its knobs (None: the stack's; `grad_checkpointing` None
    is the stack's too). Without a budget, memory is not limited (fit is not judged): a pure prediction. `model_config`
    plans a config dict under the name `model`; `serve_gpu`, `serve_vram`, `serve_context` and
    `serve_concurrency` describe serving (default: the training GPU, `seq_len`, one sequence; one per
    task up to 32 when multi-tenant); `method_config` is the settings of the one method in
    `methods` (e.g. {"rank": 8, "targets": ["q_proj", "v_proj"]}).

    Returns the Plan: one entry per method (memory breakdown, fits, limits, file size, speed, task
    switching) and a recommendation. `plan(...).to_dict()` is the `--format json` output. `engine`
    "trace" or "both" also runs the traced engine (slow: seconds per method).

    Raises:
        BadInputError: unknown model, method, target or GPU; an invalid knob (exit code 2 in the CLI).
    """
    from peftplan import api

    names = [methods] if isinstance(methods, str) else methods
    return api.plan(api.PlanRequest(
        model=model, vram=vram, gpu=gpu, gpus=gpus, shard=shard,
        cpu_offload=cpu_offload, stack=stack, lengths=Path(lengths) if lengths is not None else None,
        tokenizer=tokenizer,
        knobs={"loss": loss, "loss_chunks": loss_chunks, "loss_chunk_tokens": loss_chunk_tokens,
               "loss_recompute": loss_recompute, "adapter_dtype": adapter_dtype, "kernels": kernels, "kbit_prep": kbit_prep, "checkpointing": checkpointing,
               "offload_activations": offload_activations, "optimizer_in_bwd": optimizer_in_bwd,
               "packing": packing, "precision": precision, "loss_fp32": loss_fp32, "keep_logits": keep_logits, "legacy_loss": legacy_loss,
               "compile_loss": compile_loss, "bnb_keeps_input": bnb_keeps_input, "bnb_fp16_state": bnb_fp16_state},
        gpu_profiles=Path(gpu_profiles) if gpu_profiles is not None else None, seq_len=seq_len,
        batch_size=batch_size, grad_ckpt=grad_checkpointing, optimizer=optimizer,
        dtype=dtype, attn=attention,
        device=device, methods=names, rank=rank, alpha=alpha, targets=targets,
        virtual_tokens=virtual_tokens, quant=quant, bottleneck=bottleneck,
        peft_config=Path(peft_config) if peft_config is not None else None, tasks=tasks,
        switching=switching, examples=examples, train_tokens=train_tokens,
        epochs=epochs, mfu=mfu, fit_search=fit_search, engine=engine,
        model_config_dict=model_config, method_config=method_config, require_budget=False, serve_gpu=serve_gpu,
        serve_vram=serve_vram, serve_context=serve_context, serve_concurrency=serve_concurrency,
    ))
