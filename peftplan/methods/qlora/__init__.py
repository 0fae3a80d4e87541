"""QLoRA: LoRA on a 4-bit NF4 base with double quantization (Dettmers et al., 2023)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from peftplan.methods.lora import Lora, LoraConfig


class QLoraConfig(LoraConfig):
    """LoRA settings on a quantized base (NF4 by default)."""

    quant: Literal["nf4", "fp4", "int8"] = Field("nf4", description="Base quantization (not 'none').")


class QLora(Lora):
    name = "qlora"
    summary = "LoRA on a bitsandbytes NF4 (double-quant) base; smallest memory for the weights."
    config_cls: ClassVar[type[LoraConfig]] = QLoraConfig


METHOD = QLora()
