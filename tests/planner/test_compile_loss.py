"""`--compile-loss`: what inductor saves for torchtune's chunked cross-entropy, checked on a real compiled step.

The traced engine runs on fake tensors, which inductor does not take, so this knob is held to a real
CPU step: `torch.compile` of torchtune's per-chunk `F.cross_entropy(logits.float(), ...)` saves the
chunk's bf16 logits and two fp32 values per token, where eager saves the fp32 log-softmax.
"""

from __future__ import annotations

import pytest

import peftplan

torch = pytest.importorskip("torch")


def _saved_bytes(fn, chunks: list, labels: list) -> int:  # type: ignore[no-untyped-def]
    """Bytes of the distinct storages autograd saves for the loss over every chunk."""
    storages: dict[int, int] = {}

    def pack(tensor):  # type: ignore[no-untyped-def]
        if tensor.dtype.is_floating_point:  # labels are int64 and priced with the batch
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total = sum(fn(chunk, label) for chunk, label in zip(chunks, labels, strict=True))
    total.backward()
    return sum(storages.values())


def test_compiled_chunked_cross_entropy_saves_the_logits_and_two_fp32_values_per_token() -> None:
    import torch.nn.functional as F

    def cross_entropy(logits, labels):  # type: ignore[no-untyped-def]  # torchtune's compute_cross_entropy
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    tokens, vocab, parts = 256, 3000, 4
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, vocab, generator=generator).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(vocab, (tokens,), generator=generator)
    chunks, chunk_labels = list(logits.chunk(parts)), list(labels.chunk(parts))
    eager = _saved_bytes(cross_entropy, chunks, chunk_labels)
    compiled = _saved_bytes(torch.compile(cross_entropy), chunks, chunk_labels)
    assert eager == tokens * vocab * 4 + 4 * parts  # the fp32 log-softmax (plus nll's total weight per chunk)
    assert compiled == tokens * vocab * 2 + tokens * 8  # what the analytic model prices for --compile-loss


def test_the_plan_prices_the_compiled_loss_that_way() -> None:
    seq, vocab = 2048, 128256
    kwargs = {"methods": "lora", "stack": "torchtune", "seq_len": seq, "fit_search": False}
    eager = peftplan.plan("meta-llama/Llama-3.1-8B", **kwargs).methods[0].memory  # type: ignore[arg-type]
    compiled = peftplan.plan("meta-llama/Llama-3.1-8B", compile_loss=True, **kwargs).methods[0].memory  # type: ignore[arg-type]
    assert compiled.peak_allocated < eager.peak_allocated - seq * vocab  # 2 bytes held instead of 4 (+ copies)
