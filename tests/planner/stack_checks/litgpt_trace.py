"""Trace litgpt's own training step on a tiny model and print its live-bytes peak as JSON.

Runs in the side venv `make litgpt` builds (`.venv-litgpt`: litgpt 0.5.13, lightning, torch 2.13 CPU),
never in the project's venv (litgpt needs huggingface-hub < 1.4). It imports only torch, lightning,
litgpt and `peftplan.planner.livebytes` (torch only), so PYTHONPATH must hold the project.

The step is litgpt's `finetune/lora.py` loop (litgpt 0.5.13 = Lightning-AI/litgpt@2685705, l.354-365):
`logits = model(input_ids, lm_head_chunk_size=128)`, `logits[-1] = logits[-1][..., :-1, :]`,
`chunked_cross_entropy(logits, targets[..., 1:])`, `fabric.backward`, `optimizer.step()`,
`optimizer.zero_grad()`, with the model built under `fabric.init_module()` and set up by Fabric in
`bf16-true` on the CPU (so `_FabricModule.forward` casts the output to fp32), AdamW as the config hub's.
Two iterations run; the peak is the second's (a steady step: optimizer states exist, and the loop's
`logits` from the first step are alive until the second forward returns).

Usage: python tests/planner/stack_checks/litgpt_trace.py '{"n_embd": 128, ...}'   (keys below; prints {"peak": ..., ...})
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import lightning as L
    import torch
    from litgpt.lora import GPT, Config, mark_only_lora_as_trainable
    from litgpt.utils import chunked_cross_entropy

    from peftplan.planner.livebytes import LiveBytes

    spec = json.loads(argv[0]) if argv else {}
    batch, seq = int(spec.get("batch", 2)), int(spec.get("seq", 256))
    config = Config(
        name="tiny", block_size=seq, vocab_size=int(spec.get("vocab", 512)), padded_vocab_size=int(spec.get("vocab", 512)),
        n_layer=int(spec.get("n_layer", 2)), n_embd=int(spec.get("n_embd", 128)), n_head=int(spec.get("n_head", 4)),
        n_query_groups=int(spec.get("n_query_groups", 2)), intermediate_size=int(spec.get("intermediate", 256)),
        rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP",
        lora_r=int(spec.get("rank", 8)), lora_alpha=16, lora_dropout=float(spec.get("dropout", 0.05)),
        lora_query=True, lora_key=False, lora_value=True, lora_projection=False, lora_mlp=False, lora_head=False,
    )
    torch.manual_seed(0)
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="bf16-true")
    with fabric.init_module(empty_init=False):
        model = GPT(config)
    mark_only_lora_as_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    model, optimizer = fabric.setup(model, optimizer)
    model.train()
    ids = torch.randint(0, config.padded_vocab_size, (batch, seq))
    input_ids, targets = ids, ids.clone()

    live = LiveBytes()
    live.track(list(model.parameters()) + list(model.buffers()) + [input_ids, targets])
    peaks = []
    with live:
        logits = None
        for _ in range(2):
            live.reset_peak()
            with live.phase("forward"):
                logits = model(input_ids, lm_head_chunk_size=128)
            with live.phase("loss"):
                logits[-1] = logits[-1][..., :-1, :]
                loss = chunked_cross_entropy(logits, targets[..., 1:])
            with live.phase("backward"):
                fabric.backward(loss)
            with live.phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad()
            peaks.append(live.peak)
        del logits, loss
    print(json.dumps({
        "peak": peaks[-1], "first_peak": peaks[0], "peak_phase": live.peak_phase,
        "logits_dtype": "fp32",
        "trainable": sum(p.numel() for p in trainable),
        "litgpt": __import__("litgpt").__version__ if hasattr(__import__("litgpt"), "__version__") else "",
        "torch": torch.__version__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
