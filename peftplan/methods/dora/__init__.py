"""DoRA: LoRA on the direction plus a learned per-output magnitude (Liu et al., 2024)."""

from __future__ import annotations

from peftplan.methods.lora import Lora


class Dora(Lora):
    name = "dora"
    summary = "Weight-decomposed LoRA: low-rank direction update plus a magnitude vector; merges."
    use_dora = True


METHOD = Dora()
