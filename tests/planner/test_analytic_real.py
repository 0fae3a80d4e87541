"""The analytic memory model against a real CPU training step measured with the live-bytes tracker.

Each case builds a small real model with random weights (2 blocks at SmolLM2-135M's widths and a
16k vocabulary, so the loss and the blocks both weigh in), applies the real method (peft, bitsandbytes on CPU for quantized bases),
runs one warm-up step and then one measured steady-state step: forward with the loss, backward,
optimizer step, `zero_grad(set_to_none=True)`. The live-bytes peak counts the weights, bitsandbytes
constants, optimizer states and the batch, exactly what `peak_allocated` predicts. The analytic model
is asked for `device="cpu"` (CPU dropout masks and SDPA kernels) and must land within 10%.

`python -m tests.planner.test_analytic_real` prints the error table quoted in docs/planner.md.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from peftplan.methods import get_method
from peftplan.planner.context import TrainContext

TOLERANCE = 0.10
SMOL_2_BLOCKS = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 2,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 16384,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
}
GPT2_SMALL = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_embd": 256,
    "n_layer": 2,
    "n_head": 4,
    "vocab_size": 16384,
    "n_positions": 512,
}
BERT_SMALL = {
    "model_type": "bert",
    "architectures": ["BertForMaskedLM"],
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 16384,
    "max_position_embeddings": 512,
}
QWEN2_SMALL = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 16384,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
}
CTX = TrainContext(seq_len=64, batch_size=2, device="cpu")


def _bnb_constants(model: Any) -> list[Any]:
    """The quantization constants bitsandbytes keeps beside each packed weight (not parameters)."""
    import torch

    tensors: list[Any] = []
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        for obj in (state, getattr(state, "state2", None)):
            for name in ("absmax", "code", "offset"):
                value = getattr(obj, name, None) if obj is not None else None
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            tensors.append(scb)
    return tensors


@contextlib.contextmanager
def one_thread() -> Any:
    """Small ops on a shared 2-core machine run far faster on one thread (no OpenMP contention)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measured_peak(config: dict, method_name: str, ctx: TrainContext, **knobs: Any) -> int:
    """Live bytes at the peak of one real steady-state training step on CPU."""
    with one_thread():
        return _measured_peak(config, method_name, ctx, **knobs)


def _measured_peak(config: dict, method_name: str, ctx: TrainContext, **knobs: Any) -> int:
    import torch

    from peftplan.planner.livebytes import LiveBytes
    from peftplan.planner.trace_build import build_trained_model, torch_dtype
    from peftplan.planner.trace_optim import build_optimizer, optimizer_tensors, warm_up

    torch.manual_seed(0)
    method = get_method(method_name)
    cfg = method.make_config(**knobs)
    model = build_trained_model(config, method, cfg, ctx, device="cpu")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(ctx.optimizer, trainable)
    warm_up(optimizer, trainable)
    ids = torch.randint(0, config["vocab_size"], (ctx.batch_size, ctx.seq_len))
    labels = ids.clone()
    live = LiveBytes()
    live.track_module(model)
    live.track(_bnb_constants(model))
    live.track(optimizer_tensors(optimizer))
    live.track([ids, labels])
    autocast = (
        torch.autocast("cpu", dtype=torch_dtype(ctx.dtype))
        if ctx.dtype != "fp32"
        else contextlib.nullcontext()
    )
    with live:
        with autocast:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return live.peak


def predicted_peak(config: dict, method_name: str, ctx: TrainContext, **knobs: Any) -> int:
    from peftplan.models import spec_from_config
    from peftplan.planner.memory import estimate_memory

    method = get_method(method_name)
    return estimate_memory(spec_from_config(config), method, method.make_config(**knobs), ctx).peak_allocated


def error(config: dict, method_name: str, ctx: TrainContext, **knobs: Any) -> tuple[int, int, float]:
    real = measured_peak(config, method_name, ctx, **knobs)
    analytic = predicted_peak(config, method_name, ctx, **knobs)
    return real, analytic, (analytic - real) / real


ALL_METHODS = [
    "full",
    "lora",
    "qlora",
    "dora",
    "qdora",
    "rslora",
    "ia3",
    "prefix",
    "prompt",
    "adapter",
    "loha",
    "lokr",
    "vera",
]


@pytest.mark.slow
@pytest.mark.parametrize("method_name", ALL_METHODS)
def test_every_method_bf16_autocast(method_name: str) -> None:
    real, analytic, err = error(SMOL_2_BLOCKS, method_name, CTX)
    assert abs(err) < TOLERANCE, f"{method_name}: analytic {analytic:,} vs real {real:,} ({err:+.2%})"


CASES = [
    ("full", TrainContext(seq_len=64, batch_size=2, dtype="fp32", device="cpu"), {}),
    ("lora", TrainContext(seq_len=64, batch_size=2, dtype="fp32", device="cpu"), {}),
    ("dora", TrainContext(seq_len=64, batch_size=2, dtype="fp32", device="cpu"), {}),
    ("lora", TrainContext(seq_len=64, batch_size=2, grad_checkpointing=True, device="cpu"), {}),
    ("qlora", TrainContext(seq_len=64, batch_size=2, grad_checkpointing=True, device="cpu"), {}),
    ("full", TrainContext(seq_len=64, batch_size=2, grad_checkpointing=True, device="cpu"), {}),
    ("lora", TrainContext(seq_len=64, batch_size=2, attention="eager", device="cpu"), {}),
    ("lora", TrainContext(seq_len=64, batch_size=2, device="cpu"), {"rank": 64, "dropout": 0.1}),
    ("lora", TrainContext(seq_len=64, batch_size=2, device="cpu"), {"quant": "int8"}),
    ("full", TrainContext(seq_len=64, batch_size=2, optimizer="adamw-fp32", device="cpu"), {}),
    ("full", TrainContext(seq_len=64, batch_size=2, optimizer="sgd-momentum", device="cpu"), {}),
    ("full", TrainContext(seq_len=64, batch_size=2, optimizer="adamw8bit", device="cpu"), {}),
    ("full", TrainContext(seq_len=64, batch_size=2, optimizer="adafactor", device="cpu"), {}),
    ("lora", TrainContext(seq_len=256, batch_size=1, device="cpu"), {"targets": "attn"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method_name", "ctx", "knobs"), CASES, ids=lambda v: str(v) if isinstance(v, str) else None
)
def test_settings(method_name: str, ctx: TrainContext, knobs: dict) -> None:
    real, analytic, err = error(SMOL_2_BLOCKS, method_name, ctx, **knobs)
    assert abs(err) < TOLERANCE, (
        f"{method_name} {ctx} {knobs}: analytic {analytic:,} vs real {real:,} ({err:+.2%})"
    )


# A tiny vocabulary and longer sequences move the peak away from the loss into the blocks: the forward's
# working tensors, a block's backward, and checkpoint recomputation.
SMALL_VOCAB = {**SMOL_2_BLOCKS, "vocab_size": 512}
BLOCK_PEAKS = [
    ("lora", TrainContext(seq_len=512, batch_size=2, device="cpu")),
    ("dora", TrainContext(seq_len=256, batch_size=2, device="cpu")),
    ("loha", TrainContext(seq_len=256, batch_size=2, device="cpu")),
    ("qlora", TrainContext(seq_len=256, batch_size=2, device="cpu")),
    ("lora", TrainContext(seq_len=512, batch_size=2, grad_checkpointing=True, device="cpu")),
    ("ia3", TrainContext(seq_len=512, batch_size=2, grad_checkpointing=True, device="cpu")),
    ("full", TrainContext(seq_len=512, batch_size=2, grad_checkpointing=True, device="cpu")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method_name", "ctx"), BLOCK_PEAKS, ids=lambda v: v if isinstance(v, str) else None)
def test_peaks_inside_the_blocks(method_name: str, ctx: TrainContext) -> None:
    real, analytic, err = error(SMALL_VOCAB, method_name, ctx)
    assert abs(err) < TOLERANCE, f"{method_name} {ctx}: analytic {analytic:,} vs real {real:,} ({err:+.2%})"


FAMILIES = [
    (GPT2_SMALL, "lora"),
    (GPT2_SMALL, "full"),
    (BERT_SMALL, "lora"),
    (BERT_SMALL, "bitfit"),
    (QWEN2_SMALL, "bitfit"),
    (QWEN2_SMALL, "prompt"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "method_name"), FAMILIES, ids=lambda v: v["model_type"] if isinstance(v, dict) else v
)
def test_other_architectures(config: dict, method_name: str) -> None:
    real, analytic, err = error(config, method_name, CTX)
    assert abs(err) < TOLERANCE, (
        f"{config['model_type']} {method_name}: analytic {analytic:,} vs real {real:,} ({err:+.2%})"
    )


def error_table() -> str:
    """Markdown table of every case above (what docs/planner.md quotes)."""
    rows = [
        "| model | method | setting | real peak (bytes) | analytic | error |",
        "|---|---|---|---:|---:|---:|",
    ]
    runs = [(SMOL_2_BLOCKS, m, CTX, {}) for m in ALL_METHODS]
    runs += [(SMOL_2_BLOCKS, m, c, k) for m, c, k in CASES]
    runs += [(cfg, m, CTX, {}) for cfg, m in FAMILIES]
    runs += [(SMALL_VOCAB, m, c, {}) for m, c in BLOCK_PEAKS]
    for config, method_name, ctx, knobs in runs:
        real, analytic, err = error(config, method_name, ctx, **knobs)
        setting = f"{ctx.dtype} {ctx.optimizer} {ctx.attention} b{ctx.batch_size} s{ctx.seq_len}"
        setting += " ckpt" if ctx.grad_checkpointing else ""
        setting += "".join(f" {k}={v}" for k, v in knobs.items())
        model = config["model_type"] + (f" (vocab {config['vocab_size']})" if config["vocab_size"] < 1000 else "")
        rows.append(f"| {model} | {method_name} | {setting} | {real:,} | {analytic:,} | {err:+.2%} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(error_table())
