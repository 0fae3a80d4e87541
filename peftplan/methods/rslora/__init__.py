"""rsLoRA: LoRA scaled by alpha/sqrt(r) instead of alpha/r, stable at high rank (Kalajdzievski, 2023)."""

from __future__ import annotations

from peftplan.methods.lora import Lora


class RsLora(Lora):
    name = "rslora"
    summary = "LoRA with rank-stabilised scaling alpha/sqrt(r); same parameters as LoRA."
    use_rslora = True


METHOD = RsLora()
