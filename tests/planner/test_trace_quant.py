"""Quantized bases in the trace: bitsandbytes' own layout on meta, fake stand-ins, dequantized temporaries."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from peftplan.methods.quantize import prepare_quantized_base
from peftplan.models.build import build_model
from peftplan.models.catalog import catalog_config_dict
from peftplan.planner.livebytes import LiveBytes
from peftplan.planner.trace_build import config_at_depth, make_fake
from peftplan.planner.trace_quant import DecomposeGemm4bit, quantize_base_on_meta

CONFIG = config_at_depth({**catalog_config_dict("HuggingFaceTB/SmolLM2-135M"), "vocab_size": 1024}, 1)


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, storage bytes of the weight and each quantization constant) for every bnb layer."""
    rows = []
    for name, module in model.named_modules():
        weight: Any = getattr(module, "weight", None)
        if type(weight).__name__ == "Params4bit":
            state = weight.quant_state
            tensors = [weight, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
        elif type(weight).__name__ == "Int8Params":
            tensors = [weight, weight.SCB]
        else:
            continue
        rows.append((name, tuple(t.untyped_storage().nbytes() for t in tensors)))
    return rows


@pytest.mark.parametrize("quant", ["nf4", "fp4", "int8"])
def test_meta_quantization_lays_out_storage_as_bitsandbytes_does(quant: str) -> None:
    real = build_model(CONFIG, device="cpu", dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_quantized_base(real, quant)
        meta = build_model(CONFIG, device="meta", dtype=torch.bfloat16)
        assert quantize_base_on_meta(meta, quant) == 7
    make_fake(meta, FakeTensorMode(allow_non_fake_inputs=True))
    assert layout(meta) == layout(real)
    assert len(layout(real)) == 7
    # Non-quantized parameters are cast to fp32 by peft's k-bit preparation, on both.
    assert {n: p.dtype for n, p in meta.named_parameters()} == {
        n: p.dtype for n, p in real.named_parameters()
    }


def test_nf4_layout_is_the_documented_one() -> None:
    meta = build_model(CONFIG, device="meta", dtype=torch.bfloat16)
    quantize_base_on_meta(meta, "nf4")
    out, inp = 1536, 576  # gate_proj
    numel, blocks = out * inp, out * inp // 64
    name, sizes = next(row for row in layout(meta) if row[0].endswith("gate_proj"))
    # 2 weights per byte; 8-bit absmax per 64; fp32 absmax per 256 blocks; 16 + 256 fp32 codes; fp32 offset.
    assert sizes == (numel // 2, blocks, 16 * 4, 4, -(-blocks // 256) * 4, 256 * 4)


def test_fake_weights_pass_for_bitsandbytes_ones() -> None:
    meta = build_model(CONFIG, device="meta", dtype=torch.bfloat16)
    quantize_base_on_meta(meta, "nf4")
    make_fake(meta, FakeTensorMode(allow_non_fake_inputs=True))
    weight: Any = meta.get_submodule("model.layers.0.mlp.up_proj").weight
    assert type(weight).__name__ == "Params4bit"  # peft dispatches on the class name
    assert weight.quant_state.absmax.dtype == torch.uint8
    assert isinstance(weight, nn.Parameter) and not weight.requires_grad


def test_decomposition_shows_the_dequantized_weight() -> None:
    """bnb's fused gemm_4bit op hides its dequantized weight; run op by op, it is a visible temporary."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(256, 512, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(
        torch.randn(512, 256, dtype=torch.bfloat16), requires_grad=False, quant_type="nf4"
    )
    layer = layer.to("cpu")
    layer.support_avx512bf16_for_cpu = False
    x = torch.randn(8, 256, dtype=torch.bfloat16, requires_grad=True)

    def forward_peak(decompose: bool) -> int:
        lb = LiveBytes()
        with lb:
            if decompose:
                with DecomposeGemm4bit():
                    out = layer(x)
            else:
                out = layer(x)
        del out
        return lb.peak

    dequantized = 512 * 256 * 2  # bf16 weight, plus the fp32 absmax of double quantization
    assert forward_peak(decompose=True) == forward_peak(decompose=False) + dequantized + 512 * 256 // 64 * 4
