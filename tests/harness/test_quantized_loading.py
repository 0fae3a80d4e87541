"""A quantized base loads as QLoRA users load it (`from_pretrained(..., quantization_config=...)`): its peak while
loading is the quantized model plus about one layer, never the unquantized model first; and the avx512_bf16
repacking guard (STACK.md) is on before anything evaluates it, the base latency included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

MiB = 1024**2

# Large enough to tell the two cases apart: 113M parameters (216 MiB in bf16, 55 MiB in nf4), while one
# decoder layer is 18 MiB in bf16. Saved in fp32, as the embedded SmolLM2 is cached, so that loading it in
# bf16 must allocate every bf16 weight (a bf16 checkpoint would only be mapped from the file).
LARGE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "num_key_value_heads": 12, "vocab_size": 512, "tie_word_embeddings": False}

# Runs in a fresh interpreter. Measured twice:
# - live tensor bytes (`planner/livebytes.py`: every storage an aten op allocates, exactly, freed by weakref;
#   storages on meta, where transformers builds the skeleton, are no memory);
# - the process's anonymous resident memory (RssAnon), sampled every millisecond. Not VmHWM: it counts the
#   checkpoint's mmapped file pages (page cache, hundreds of MiB here) whatever the loader allocates.
# A tiny quantized load first pays the lazy imports and kernel set-up, which are not the loading's peak.
_PROBE = textwrap.dedent("""
    import json, sys, threading, time
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from peftplan.harness.loading import WeightsSource, load_quantized
    from peftplan.harness.suite import ModelSection
    from peftplan.planner.livebytes import LiveBytes

    large, tiny = sys.argv[1], sys.argv[2]

    def load(location):
        return load_quantized(WeightsSource("pretrained", location), ModelSection(), dtype=torch.bfloat16,
                              place="cpu", quant="nf4", seed=0)

    def anon():
        with open("/proc/self/status") as handle:
            return next(int(l.split()[1]) * 1024 for l in handle if l.startswith("RssAnon:"))

    class RealBytes(LiveBytes):
        def _add(self, storage):
            if storage.device.type != "meta":
                super()._add(storage)

    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=512)).save_pretrained(tiny)
    warm = load(tiny)
    del warm
    start, peak, done = anon(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    live = RealBytes()
    with live:
        model = load(large)
    done.set()
    sampler.join()
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():  # a 4-bit weight's absmax constants (double-quantized) live in its quant_state
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None:
            tensors += [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
            state = getattr(state, "state2", None)
    quantized = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())
    kinds = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
    print(json.dumps({"live_peak": live.peak, "rss_peak": max(peak[0], anon()) - start, "quantized": quantized,
                      "kinds": kinds, "loaded_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False))}))
""")


def _save_large(directory: Path) -> tuple[int, int]:
    """The large model saved in fp32; returns (its bf16 bytes, one decoder layer's bf16 bytes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LARGE))
    model.save_pretrained(directory)
    layer = sum(p.numel() for p in model.model.layers[0].parameters()) * 2
    return sum(p.numel() for p in model.parameters()) * 2, layer


def test_quantized_loading_peaks_at_the_quantized_size_plus_one_layer(tmp_path: Path) -> None:
    bf16_bytes, layer_bytes = _save_large(tmp_path / "large")
    done = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "large"), str(tmp_path / "tiny")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["loaded_in_4bit"] and "Linear4bit" in found["kinds"]
    quantized = found["quantized"]
    assert quantized < bf16_bytes / 3  # the nf4 model (its embeddings, head and norms stay bf16)
    # The model is large enough that "quantized + one layer" and "the whole bf16 model" cannot be confused.
    assert quantized + 2 * layer_bytes + 32 * MiB < bf16_bytes
    # Exactly: the live tensors never exceed the quantized model plus one layer in bf16.
    assert found["live_peak"] <= quantized + layer_bytes, found
    # The process: its resident memory stays far below a bf16 copy (reading the fp32 checkpoint, one weight at a
    # time, costs a transient layer or two; 32 MiB for allocator and Python objects).
    assert found["rss_peak"] <= quantized + 2 * layer_bytes + 32 * MiB, {**found, "bf16": bf16_bytes}


def test_quantized_base_is_guarded_before_its_first_evaluation_and_trains_exact_gradients() -> None:
    """The base latency is an eval-mode no-grad forward of the quantized base, before the method is applied: on a
    CPU with avx512_bf16 that forward would repack the 4-bit weights, and every later LoRA gradient would be wrong."""
    import bitsandbytes as bnb

    from peftplan.harness.loading import WeightsSource, load_base
    from peftplan.harness.measure import measure_speed
    from peftplan.harness.suite import LoadedSuite, ModelSection, parse_suite
    from peftplan.harness.tasks import collate
    from peftplan.methods import get_method
    from tests.harness.qlora_reference import nonzero_lora_b, quantized_and_reference_grads
    from tests.harness.test_train import items
    from tests.harness.tiny import TINY_MODEL, TINY_SUITE

    torch.set_num_threads(1)
    section = ModelSection(config=TINY_MODEL, tokenizer="bytes", dtype="bf16")
    loaded = LoadedSuite(parse_suite(TINY_SUITE), Path("suite.yaml"), Path("."))
    model, _ = load_base(WeightsSource("random", "<inline config>", TINY_MODEL), section, loaded, device="cpu",
                         seed=0, quant="nf4")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * TINY_MODEL["num_hidden_layers"]  # q, k, v, o, gate, up, down; not lm_head
    assert all(m.support_avx512bf16_for_cpu is False for m in quantized)
    weights = [m.weight for m in quantized]
    measure_speed(model, [5, 6, 7, 8], new_tokens=2, repeats=1, device="cpu")  # what the base latency runs

    method = get_method("qlora")
    peft_model = method.apply(model, method.make_config(rank=4, quant="nf4"))
    after = [m for m in peft_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert [m.weight for m in after] == weights  # not quantized a second time
    nonzero_lora_b(peft_model)
    grads, reference = quantized_and_reference_grads(peft_model, collate(items(8), 0))
    # The base computes in bf16 (its compute dtype), the reference in fp32: a whole tensor's relative error
    # is a few thousandths; repacked weights give 0.59 (STACK.md).
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        assert float((reference[name] - grad).norm() / reference[name].norm()) < 0.02, name


@pytest.mark.parametrize("quant", ["fp4", "int8"])
def test_every_quantization_loads_through_transformers(quant: str) -> None:
    import bitsandbytes as bnb

    from peftplan.harness.loading import WeightsSource, load_base
    from peftplan.harness.suite import LoadedSuite, ModelSection, parse_suite
    from tests.harness.tiny import TINY_MODEL, TINY_SUITE

    section = ModelSection(config=TINY_MODEL, tokenizer="bytes", dtype="bf16")
    loaded = LoadedSuite(parse_suite(TINY_SUITE), Path("suite.yaml"), Path("."))
    model, _ = load_base(WeightsSource("random", "<inline config>", TINY_MODEL), section, loaded, device="cpu",
                         seed=0, quant=quant)
    kind = bnb.nn.Linear8bitLt if quant == "int8" else bnb.nn.Linear4bit
    layers = [m for m in model.modules() if isinstance(m, kind)]
    assert len(layers) == 7 * TINY_MODEL["num_hidden_layers"]
    assert getattr(model, "is_loaded_in_8bit" if quant == "int8" else "is_loaded_in_4bit")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(logits).all()
