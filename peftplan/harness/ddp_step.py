"""One rank of a data-parallel trial, started by `accelerate launch` (see `harness/multigpu.py`).

Every rank builds the same model (same seed), applies the method through the registry, trains on its own
shard of the batches through `Accelerator.prepare` (DDP: gradients are all-reduced, so adapters stay equal),
and measures its own peak (CUDA `max_memory_allocated`, or the live-bytes tracker on CPU). Rank 0 gathers
the peaks and writes them next to the planner's per-GPU prediction for the same step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def run_rank(spec: dict[str, Any]) -> None:
    import torch
    from accelerate import Accelerator

    from peftplan.harness.atomic import atomic_write_text
    from peftplan.harness.measure import StepMemoryProbe
    from peftplan.methods import get_method
    from peftplan.models.build import build_model

    accelerator = Accelerator(cpu=spec["device"] == "cpu")
    torch.manual_seed(spec["seed"])  # the same initial weights on every rank
    model = build_model(spec["model_config"], device="cpu", dtype=torch.float32)
    method = get_method(spec["method"])
    model = method.apply(model, method.make_config(**spec["method_config"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    model, optimizer = accelerator.prepare(model, optimizer)
    probe = StepMemoryProbe(model, str(accelerator.device), steps=spec["steps"])
    probe.attach_optimizer(optimizer)
    shard = torch.Generator().manual_seed(spec["seed"] * 1000 + accelerator.process_index)
    vocab = int(spec["model_config"]["vocab_size"])
    losses = []
    for step in range(spec["steps"]):
        ids = torch.randint(3, vocab, (spec["batch_size"], spec["seq_len"]), generator=shard).to(accelerator.device)
        probe.record_batch(step, tuple(ids.shape))
        with probe.step(step):
            loss = model(input_ids=ids, labels=ids).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    peak = probe.result()
    trained = accelerator.unwrap_model(model)
    checksum = float(sum(p.detach().double().sum() for p in trained.parameters() if p.requires_grad))
    mine = {"rank": accelerator.process_index, "peak_allocated": peak.peak_allocated, "source": peak.source,
            "losses": losses, "adapter_checksum": checksum}
    ranks = accelerator.gather_for_metrics([mine], use_gather_object=True)
    if accelerator.is_main_process:
        import torch.distributed as dist

        predicted = per_gpu_prediction(spec, accelerator.num_processes)
        report = {
            "world_size": accelerator.num_processes,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "distributed_type": str(accelerator.distributed_type.value),
            "ranks": sorted(ranks, key=lambda r: r["rank"]),
            "predicted_per_gpu": predicted,
        }
        atomic_write_text(Path(spec["out"]), json.dumps(report, indent=2))
    accelerator.end_training()


def per_gpu_prediction(spec: dict[str, Any], gpus: int) -> dict[str, int]:
    """The planner's per-GPU MemoryBreakdown (bytes) for the step every rank ran (DDP: no sharding)."""
    from peftplan import plan

    result = plan("ddp-trial", model_config=spec["model_config"], methods=[spec["method"]],
                  method_config=spec["method_config"], gpus=gpus, shard="none", seq_len=spec["seq_len"],
                  batch_size=spec["batch_size"], grad_checkpointing=False, optimizer="adamw-fp32", dtype="fp32",
                  device="cuda" if spec["device"] == "cuda" else "cpu", fit_search=False)
    (entry,) = result.methods
    return {k: int(v) for k, v in entry.memory.to_dict().items()}


if __name__ == "__main__":
    run_rank(json.loads(Path(sys.argv[1]).read_text()))
