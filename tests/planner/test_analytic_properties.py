"""Internal consistency of the analytic model over methods and real architectures (shipped specs)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peftplan.errors import BadInputError
from peftplan.methods import all_methods, get_method
from peftplan.models import get_spec
from peftplan.planner.context import TrainContext
from peftplan.planner.fit import largest, max_batch_size, max_rank, max_seq_len
from peftplan.planner.memory import estimate_memory, step_model

MODELS = [
    "meta-llama/Llama-3.2-1B",
    "Qwen/Qwen2.5-0.5B",
    "google/gemma-2-2b",
    "openai-community/gpt2",
    "google-bert/bert-base-uncased",
    "microsoft/phi-2",
    "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen2-VL-7B-Instruct",
]
CTX = TrainContext(seq_len=512, batch_size=2)


def _applicable(spec):  # type: ignore[no-untyped-def]
    for method in all_methods():
        cfg = method.make_config()
        try:
            method.check(spec, cfg)
        except BadInputError:
            continue
        yield method, cfg


@pytest.mark.parametrize("model_id", MODELS)
def test_breakdown_adds_up_and_never_falls_below_the_weights(model_id: str) -> None:
    spec = get_spec(model_id)
    seen = 0
    for method, cfg in _applicable(spec):
        memory = estimate_memory(spec, method, cfg, CTX)
        assert memory.component_sum() == memory.peak_allocated, method.name
        assert memory.peak_allocated >= memory.weights + memory.quant_constants > 0, method.name
        assert memory.reserved >= memory.peak_allocated
        assert memory.total == memory.reserved + memory.overhead
        seen += 1
    assert seen >= 10


@pytest.mark.parametrize(
    "model_id", ["meta-llama/Llama-3.2-1B", "openai-community/gpt2", "google/gemma-2-2b"]
)
@pytest.mark.parametrize(
    "method_name", ["full", "lora", "qlora", "dora", "ia3", "prompt", "prefix", "adapter", "loha", "vera"]
)
def test_monotonic_in_sequence_and_batch_and_checkpointing_never_costs(
    model_id: str, method_name: str
) -> None:
    spec = get_spec(model_id)
    method = get_method(method_name)
    cfg = method.make_config()
    model = step_model(spec, method, cfg, CTX)
    previous = 0
    for seq in (16, 64, 256, 1024):
        for batch in (1, 2, 4):
            peak = model.breakdown(batch, seq).peak_allocated
            assert peak >= model.breakdown(batch, seq // 2 or 1).peak_allocated
            if batch > 1:
                assert peak >= model.breakdown(batch - 1, seq).peak_allocated
        assert peak >= previous
        previous = peak
    if method_name != "prefix":  # prefix tuning cannot checkpoint (see plan_method)
        checkpointed = step_model(spec, method, cfg, replace(CTX, grad_checkpointing=True))
        for seq in (64, 512, 2048):
            assert checkpointed.breakdown(2, seq).peak_allocated <= model.breakdown(2, seq).peak_allocated


@pytest.mark.parametrize("method_name", ["lora", "qlora", "dora", "loha", "vera"])
def test_monotonic_in_rank(method_name: str) -> None:
    spec = get_spec("meta-llama/Llama-3.2-1B")
    method = get_method(method_name)
    peaks = [
        estimate_memory(spec, method, method.make_config(rank=r), CTX).peak_allocated
        for r in (1, 4, 16, 64, 256)
    ]
    assert peaks == sorted(peaks)
    assert peaks[0] < peaks[-1]


@pytest.mark.parametrize("method_name", ["full", "lora", "qlora"])
def test_fsdp_per_gpu_memory_falls_with_gpus(method_name: str) -> None:
    spec = get_spec("meta-llama/Llama-3.1-8B")
    method = get_method(method_name)
    cfg = method.make_config()
    totals = []
    for gpus in (2, 4, 8):
        ctx = TrainContext(seq_len=1024, grad_checkpointing=True, gpus=gpus, shard="fsdp")
        totals.append(estimate_memory(spec, method, cfg, ctx).peak_allocated)
    assert totals == sorted(totals, reverse=True)
    assert totals[0] > totals[-1]
    # From one GPU to two, FSDP1's root unit (the embeddings and output layer, fp32 under peft's k-bit
    # preparation) stays gathered whole beside its shard: 8B QLoRA needs more per GPU on two than on one.
    single = estimate_memory(spec, method, cfg, TrainContext(seq_len=1024, grad_checkpointing=True)).peak_allocated
    assert (single > totals[0]) == (method_name != "qlora")


@pytest.mark.parametrize("method_name", ["full", "lora"])
def test_ddp_adds_a_bucket_copy_of_every_gradient_per_gpu(method_name: str) -> None:
    spec = get_spec("meta-llama/Llama-3.2-1B")
    method = get_method(method_name)
    cfg = method.make_config()
    one = TrainContext(seq_len=1024, grad_checkpointing=True)
    single = estimate_memory(spec, method, cfg, one)
    ddp = estimate_memory(spec, method, cfg, replace(one, gpus=4))
    gradient_bytes = step_model(spec, method, cfg, one).gradients
    assert gradient_bytes > 0
    assert ddp.peak_allocated - single.peak_allocated == gradient_bytes
    assert ddp.gradients - single.gradients == gradient_bytes


def test_largest_finds_the_boundary() -> None:
    assert largest(lambda n: n <= 37, 1, 1000) == 37
    assert largest(lambda n: n <= 1000, 1, 1000) == 1000
    assert largest(lambda n: False, 1, 1000) == 0
    assert largest(lambda n: n <= 1, 1, 1000) == 1


def test_fit_search_limits_fit_and_one_more_does_not() -> None:
    spec = get_spec("meta-llama/Llama-3.2-1B")
    lora = get_method("lora")
    cfg = lora.make_config()
    ctx = TrainContext(seq_len=1024, grad_checkpointing=True)
    model = step_model(spec, lora, cfg, ctx)
    vram = 8 << 30  # below the rank cap: at 12 GiB the rank stops at k_proj's 512 outputs
    batch = max_batch_size(model, vram, 1024)
    assert batch >= 1
    assert model.breakdown(batch, 1024).total <= vram < model.breakdown(batch + 1, 1024).total
    seq = max_seq_len(model, vram, 1, 131072)
    assert model.breakdown(1, seq).total <= vram < model.breakdown(1, seq + 1).total
    rank = max_rank(spec, lora, cfg, ctx, vram)
    assert rank is not None and rank > 16
    over = step_model(spec, lora, cfg.model_copy(update={"rank": rank + 1}), ctx)
    assert over.breakdown(1, 1024).total > vram
    assert max_rank(spec, get_method("ia3"), get_method("ia3").make_config(), ctx, vram) is None
    assert max_rank(spec, lora, cfg, ctx, 12 << 30) == 512  # a rank above min(in, out) of k_proj means nothing


def test_prompt_tuning_pays_for_its_virtual_tokens_and_prefix_for_its_keys() -> None:
    spec = get_spec("meta-llama/Llama-3.2-1B")
    prompt = get_method("prompt")
    small = estimate_memory(spec, prompt, prompt.make_config(virtual_tokens=10), CTX)
    big = estimate_memory(spec, prompt, prompt.make_config(virtual_tokens=200), CTX)
    assert big.logits > small.logits and big.activations > small.activations
    prefix = get_method("prefix")
    a = estimate_memory(spec, prefix, prefix.make_config(virtual_tokens=10), CTX)
    b = estimate_memory(spec, prefix, prefix.make_config(virtual_tokens=200), CTX)
    assert b.activations > a.activations and b.logits == a.logits


def test_eager_attention_stores_seq_squared_scores_and_sdpa_does_not() -> None:
    spec = get_spec("meta-llama/Llama-3.2-1B")
    lora = get_method("lora")
    cfg = lora.make_config()

    def activations(attention: str, seq: int) -> int:
        ctx = TrainContext(seq_len=seq, attention=attention)  # type: ignore[arg-type]
        return estimate_memory(spec, lora, cfg, ctx).activations

    sdpa_growth = activations("sdpa", 4096) / activations("sdpa", 1024)
    eager_growth = activations("eager", 4096) / activations("eager", 1024)
    assert sdpa_growth == pytest.approx(4.0, rel=0.02)  # linear in the sequence
    assert eager_growth > 6.0  # the scores grow with its square
