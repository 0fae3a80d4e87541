"""QDoRA: DoRA on a 4-bit NF4 base with double quantization."""

from __future__ import annotations

from typing import ClassVar

from peftplan.methods.dora import Dora
from peftplan.methods.lora import LoraConfig
from peftplan.methods.qlora import QLoraConfig


class QDora(Dora):
    name = "qdora"
    summary = "DoRA on a bitsandbytes NF4 (double-quant) base."
    config_cls: ClassVar[type[LoraConfig]] = QLoraConfig


METHOD = QDora()
