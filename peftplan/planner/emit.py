"""`plan --emit FORMAT`: the planned configuration in a training stack's own format, with exactly the
knobs that were priced, so that what the user runs is what was planned.

A knob the format cannot express (or expresses with another value than the one priced) is refused
with the reason, never dropped. Formats other than `peft` belong to one stack, and the plan must have
priced that stack's knobs (`--stack`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError, UnknownNameError

if TYPE_CHECKING:
    from peftplan.methods.base import Method, MethodConfig
    from peftplan.models.spec import ModelSpec
    from peftplan.planner.context import TrainContext
    from peftplan.planner.plan import Plan

FORMATS: tuple[str, ...] = ("peft", "trl", "axolotl", "llama-factory", "torchtune", "unsloth")
# The stacks whose priced knobs each format runs.
FORMAT_STACKS: dict[str, tuple[str, ...]] = {
    "trl": ("trl",), "axolotl": ("axolotl",), "llama-factory": ("llama-factory",),
    "torchtune": ("torchtune",), "unsloth": ("unsloth",),
}
# transformers' `optim` names (TrainingArguments.optim) for ours.
HF_OPTIM = {"adamw": "adamw_torch", "adamw8bit": "adamw_bnb_8bit", "paged-adamw8bit": "paged_adamw_8bit",
            "sgd": "sgd", "adafactor": "adafactor"}


def hf_optim(ctx: TrainContext) -> str:
    """transformers' `optim` for the priced optimizer: torch AdamW fused or foreach (`optimizer_fused`)."""
    if ctx.optimizer == "adamw" and ctx.optimizer_fused:
        return "adamw_torch_fused"
    return HF_OPTIM[ctx.optimizer]


@dataclass(frozen=True)
class Chosen:
    """What to emit: the model, the method and its config, and the training context that was priced."""

    spec: ModelSpec
    method: Method
    cfg: MethodConfig
    ctx: TrainContext


def emit_plan(plan: Plan, fmt: str) -> str:
    """The configuration `plan` chose (its only method, or the recommendation) in format `fmt`.

    Raises:
        BadInputError: nothing to emit (no method fits), or what `emit` refuses.
    """
    from peftplan.methods import get_method

    if fmt not in FORMATS:
        raise UnknownNameError("emit format", fmt, FORMATS)
    rec = plan.recommendation
    if rec.method is not None and rec.context is not None:  # the decision's configuration, as searched
        method = get_method(rec.method)
        config = method.make_config(**{k: v for k, v in rec.config.items() if k != "lr"})
        return emit(fmt, Chosen(plan.spec, method, config, rec.context))
    if len(plan.methods) == 1:
        entry = plan.methods[0]
    else:
        name = plan.recommendation.method
        if name is None:
            raise BadInputError("--emit: nothing fits the budget, so there is no configuration to emit")
        entry = plan.method(name)
    method = get_method(entry.method)
    cfg = method.make_config(**entry.config)
    return emit(fmt, Chosen(plan.spec, method, cfg, entry.context or plan.ctx))


def emit(fmt: str, chosen: Chosen) -> str:
    """The configuration text in format `fmt`.

    Raises:
        BadInputError: an unknown format; a stack, method or knob the format cannot run as priced.
    """
    if fmt not in FORMATS:
        raise UnknownNameError("emit format", fmt, FORMATS)
    if fmt != "peft" and chosen.ctx.stack not in FORMAT_STACKS[fmt]:
        raise BadInputError(f"--emit {fmt} runs the {'/'.join(FORMAT_STACKS[fmt])} stack's knobs; plan with "
                            f"--stack {FORMAT_STACKS[fmt][-1]} (this plan priced --stack {chosen.ctx.stack})")
    return _EMITTERS[fmt](chosen)


def _refuse(fmt: str, what: str) -> BadInputError:
    return BadInputError(f"--emit {fmt} cannot express {what}; plan without it or pick another format")


def _require(fmt: str, ctx: TrainContext, allowed: dict[str, tuple[Any, ...]]) -> None:
    """Refuse every priced knob whose value the format has no setting for."""
    knobs = ctx.knobs()
    knobs["optimizer"] = ctx.optimizer
    knobs["shard"] = ctx.shard if ctx.gpus > 1 else "none"
    for name, values in allowed.items():
        if knobs[name] not in values:
            raise _refuse(fmt, f"{name}={knobs[name]}")


def _lora_fields(chosen: Chosen, fmt: str) -> dict[str, Any]:
    """Rank, alpha, dropout, the targeted leaf names and the quantization of a LoRA-family config."""
    from peftplan.methods import all_methods
    from peftplan.methods._peft import selected_linears
    from peftplan.methods.lora import Lora

    method = chosen.method
    if not isinstance(method, Lora):
        family = ", ".join(m.name for m in all_methods() if isinstance(m, Lora))
        raise _refuse(fmt, f"method {method.name!r} (it emits the LoRA family: {family})")
    cfg: Any = chosen.cfg
    leaves = sorted({lin.leaf for lin in selected_linears(chosen.spec, cfg)})
    return {"rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "targets": leaves, "quant": cfg.quant,
            "dora": method.use_dora, "rslora": method.use_rslora}


def _peft(chosen: Chosen) -> str:
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # an optional-kernel notice
    from peftplan.methods._peft import PeftMethod

    if not isinstance(chosen.method, PeftMethod):
        raise _refuse("peft", f"method {chosen.method.name!r}: peft has no such adapter")
    config = chosen.method.peft_config(chosen.spec, chosen.cfg)
    config.base_model_name_or_path = chosen.spec.model_id or None
    data = config.to_dict()
    return json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def _quant_kwargs(quant: str) -> str:
    if quant == "none":
        return ""
    if quant == "int8":
        return "BitsAndBytesConfig(load_in_8bit=True)"
    return (f'BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="{quant}", '
            'bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)')


def _trl(chosen: Chosen) -> str:
    ctx = chosen.ctx
    # TRL 1.16's SFTTrainer always computes the loss with its fused LM head (4096-token tiles).
    _require("trl", ctx, {"loss": ("fused",), "loss_chunk_tokens": (4096,), "keep_logits": (False,),
                          "precision": ("mixed",), "kbit_prep": ("none",), "checkpointing": ("none", "recompute"),
                          "offload_activations": (False, True), "optimizer_in_bwd": (False,),
                          "legacy_loss": (False,), "optimizer": tuple(HF_OPTIM), "shard": ("none",)})
    lora = _lora_fields(chosen, "trl")
    quant = _quant_kwargs(lora["quant"])
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[ctx.dtype]
    init = [f'"dtype": "{dtype}"'] + ([f'"quantization_config": {quant}'] if quant else [])
    lines = [
        f'"""TRL SFT of {chosen.spec.model_id}: {chosen.method.name} as planned by peftplan '
        f'({ctx.stack} stack knobs)."""',
        "import torch",
        "from peft import LoraConfig",
        "from transformers import BitsAndBytesConfig",
        "from trl import SFTConfig, SFTTrainer",
        "",
        f'MODEL = "{chosen.spec.model_id}"',
        "peft_config = LoraConfig(",
        f'    r={lora["rank"]}, lora_alpha={lora["alpha"]:g}, lora_dropout={lora["dropout"]:g},',
        f'    target_modules={lora["targets"]!r}, use_dora={lora["dora"]}, use_rslora={lora["rslora"]},',
        '    bias="none", task_type="CAUSAL_LM",',
        ")",
        "training_args = SFTConfig(",
        '    output_dir="out",',
        f"    per_device_train_batch_size={ctx.batch_size},",
        "    gradient_accumulation_steps=1,",
        f"    max_length={ctx.seq_len},",
        f"    packing={ctx.packing},",
        f"    gradient_checkpointing={ctx.grad_checkpointing},",
        f"    bf16={ctx.dtype == 'bf16'}, fp16={ctx.dtype == 'fp16'},",
        f'    optim="{hf_optim(ctx)}",',
        '    loss_type="nll",  # TRL 1.16: its fused LM head, never the full logits',
        f"    activation_offloading={ctx.offload_activations},",
        f"    model_init_kwargs={{{', '.join(init)}}},",
        ")",
        *_sft_main("model=MODEL, args=training_args, train_dataset=dataset, peft_config=peft_config"),
    ]
    return "\n".join(lines) + "\n"


def _yaml(data: dict[str, Any], header: str) -> str:
    import yaml

    return f"# {header}\n" + yaml.safe_dump(data, sort_keys=False)


def _axolotl(chosen: Chosen) -> str:
    ctx = chosen.ctx
    _require("axolotl", ctx, {"loss": ("full", "fused"), "loss_fp32": (True,), "keep_logits": (False,),
                              "precision": ("mixed",), "kbit_prep": ("none",),
                              "optimizer_in_bwd": (False,), "optimizer": tuple(HF_OPTIM), "shard": ("none",)})
    lora = _lora_fields(chosen, "axolotl")
    if lora["quant"] not in ("none", "nf4", "int8"):
        raise _refuse("axolotl", f"quant={lora['quant']} (axolotl loads nf4 or int8)")
    data: dict[str, Any] = {
        "base_model": chosen.spec.model_id,
        "load_in_4bit": lora["quant"] == "nf4",
        "load_in_8bit": lora["quant"] == "int8",
        "adapter": "qlora" if lora["quant"] == "nf4" else "lora",
        "lora_r": lora["rank"],
        "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"],
        "lora_target_modules": lora["targets"],
        "peft_use_dora": lora["dora"],
        "peft_use_rslora": lora["rslora"],
        "sequence_len": ctx.seq_len,
        "sample_packing": ctx.packing,
        "micro_batch_size": ctx.batch_size,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 1.0e-4,
        "optimizer": hf_optim(ctx),
        "bf16": ctx.dtype == "bf16",
        "fp16": ctx.dtype == "fp16",
        "gradient_checkpointing": {"none": False, "recompute": True, "offload": "offload"}[ctx.checkpointing],
        "activation_offloading": ctx.offload_activations,
        "datasets": [{"path": "train.jsonl", "type": "alpaca"}],
        "output_dir": "./out",
    }
    if ctx.loss == "fused":
        data["plugins"] = ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]
        data["cut_cross_entropy"] = True
    return _yaml(data, f"axolotl config for {chosen.spec.model_id}: {chosen.method.name} as planned by peftplan")


def _llama_factory(chosen: Chosen) -> str:
    ctx = chosen.ctx
    _require("llama-factory", ctx, {"loss": ("full", "fused"), "loss_fp32": (True,), "keep_logits": (False,),
                                    "precision": ("mixed",), "kbit_prep": ("none",),
                                    "offload_activations": (False,), "optimizer_in_bwd": (False,),
                                    "optimizer": tuple(HF_OPTIM), "shard": ("none",)})
    lora = _lora_fields(chosen, "llama-factory")
    data: dict[str, Any] = {
        "model_name_or_path": chosen.spec.model_id,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": lora["rank"],
        "lora_alpha": int(lora["alpha"]) if float(lora["alpha"]).is_integer() else lora["alpha"],
        "lora_dropout": lora["dropout"],
        "lora_target": ",".join(lora["targets"]),
        "use_dora": lora["dora"],
        "use_rslora": lora["rslora"],
        "dataset": "alpaca_en_demo",
        "template": "default",
        "cutoff_len": ctx.seq_len,
        "packing": ctx.packing,
        "per_device_train_batch_size": ctx.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-4,
        "num_train_epochs": 1.0,
        "optim": hf_optim(ctx),
        "bf16": ctx.dtype == "bf16",
        "fp16": ctx.dtype == "fp16",
        "disable_gradient_checkpointing": ctx.checkpointing == "none",
        "use_unsloth_gc": ctx.checkpointing == "offload",
        "enable_liger_kernel": ctx.loss == "fused",
        "output_dir": "saves/peftplan",
    }
    if lora["quant"] != "none":
        if lora["quant"] not in ("nf4", "fp4", "int8"):
            raise _refuse("llama-factory", f"quant={lora['quant']}")
        data["quantization_bit"] = 8 if lora["quant"] == "int8" else 4
        data["quantization_method"] = "bnb"
        if lora["quant"] != "int8":
            data["quantization_type"] = lora["quant"]
            data["double_quantization"] = True
    return _yaml(data, f"LLaMA-Factory config for {chosen.spec.model_id}: {chosen.method.name} as planned by peftplan")


def _tune_configs(prefix: str, *kinds: str) -> dict[str, str]:
    full = "full_low_memory" if prefix.split("/")[0] in ("llama2", "mistral", "phi3") else "full_single_device"
    return {kind: f"{prefix}_{full if kind == 'full' else kind + '_single_device'}" for kind in kinds}


# The single-device recipe configs torchtune 0.6.1 ships, by model and kind (`tune ls`; its wheel's
# recipes/configs): a model or kind not here has none (Qwen2.5 has no QLoRA config, Gemma no full one).
TORCHTUNE_CONFIGS: dict[str, dict[str, str]] = {
    "meta-llama/Llama-3.1-8B": _tune_configs("llama3_1/8B", "full", "lora", "qlora"),
    "meta-llama/Llama-3.2-1B": _tune_configs("llama3_2/1B", "full", "lora", "qlora"),
    "meta-llama/Llama-3.2-3B": _tune_configs("llama3_2/3B", "full", "lora", "qlora"),
    "meta-llama/Llama-2-7b-hf": _tune_configs("llama2/7B", "full", "lora", "qlora"),
    "meta-llama/Llama-2-13b-hf": _tune_configs("llama2/13B", "qlora"),
    "mistralai/Mistral-7B-v0.1": _tune_configs("mistral/7B", "full", "lora", "qlora"),
    "google/gemma-2-2b": _tune_configs("gemma2/2B", "lora", "qlora"),
    "google/gemma-2-9b": _tune_configs("gemma2/9B", "lora", "qlora"),
    "google/gemma-7b": _tune_configs("gemma/7B", "lora", "qlora"),
    "microsoft/Phi-3-mini-4k-instruct": _tune_configs("phi3/mini", "full", "lora", "qlora"),
    "Qwen/Qwen2.5-0.5B": _tune_configs("qwen2_5/0.5B", "full", "lora"),
    "Qwen/Qwen2.5-1.5B": _tune_configs("qwen2_5/1.5B", "full", "lora"),
    "Qwen/Qwen2.5-7B": _tune_configs("qwen2_5/7B", "full", "lora"),
    "Qwen/Qwen2.5-14B": _tune_configs("qwen2_5/14B", "lora"),
}
# Those whose optimizer block sets `fused: True` (every LoRA and QLoRA config above does; among the full
# ones only this): another optimizer must drop the key, which `~optimizer.fused` does only where it exists.
TORCHTUNE_FUSED = frozenset({config for configs in TORCHTUNE_CONFIGS.values() for kind, config in configs.items()
                             if kind != "full"} | {"qwen2_5/0.5B_full_single_device"})
TORCHTUNE_OPTIMIZERS = {"adamw": "torch.optim.AdamW", "adamw8bit": "bitsandbytes.optim.AdamW8bit",
                        "paged-adamw8bit": "bitsandbytes.optim.PagedAdamW8bit"}


def torchtune_recipe(model_id: str, whole_base: bool, quantized: bool) -> tuple[str, str]:
    """(recipe, config) of torchtune 0.6.1 for a model and method.

    Raises:
        BadInputError: torchtune ships no single-device config for this model and method.
    """
    configs = TORCHTUNE_CONFIGS.get(model_id)
    if configs is None:
        raise _refuse("torchtune", f"{model_id} (torchtune ships recipes for: {', '.join(TORCHTUNE_CONFIGS)})")
    kind = "full" if whole_base else ("qlora" if quantized else "lora")  # its DoRA is its LoRA config with use_dora
    if kind not in configs:
        raise _refuse("torchtune", f"{kind} of {model_id} (torchtune 0.6.1 ships {', '.join(configs.values())} "
                                   "for it)")
    return ("full_finetune_single_device" if whole_base else "lora_finetune_single_device"), configs[kind]


def torchtune_overrides(chosen: Chosen) -> tuple[str, str, list[str]]:
    """(recipe, config, `key=value` overrides) that run the planned configuration in torchtune 0.6."""
    ctx = chosen.ctx
    _require("torchtune", ctx, {"loss": ("full", "chunked"), "loss_fp32": (True,), "keep_logits": (False,),
                                "precision": ("pure",), "checkpointing": ("none", "recompute"),
                                "optimizer": tuple(TORCHTUNE_OPTIMIZERS), "shard": ("none",),
                                "legacy_loss": (False,), "loss_recompute": (False,), "loss_chunk_tokens": (0,)})
    if ctx.loss == "chunked" and ctx.loss_chunks != 8:
        raise _refuse("torchtune", f"loss_chunks={ctx.loss_chunks} (its models split the output into 8 chunks)")
    quantized = getattr(chosen.cfg, "quant", "none") != "none"
    recipe, config = torchtune_recipe(chosen.spec.model_id, chosen.method.traits.whole_base, quantized)
    overrides = [f"tokenizer.max_seq_len={ctx.seq_len}", f"dataset.packed={ctx.packing}",
                 f"batch_size={ctx.batch_size}", "gradient_accumulation_steps=1",
                 f"enable_activation_checkpointing={ctx.grad_checkpointing}",
                 f"enable_activation_offloading={ctx.offload_activations}", f"dtype={ctx.dtype}", "compile=False",
                 f"optimizer._component_={TORCHTUNE_OPTIMIZERS[ctx.optimizer]}",
                 "loss._component_=" + ("torchtune.modules.loss.CEWithChunkedOutputLoss" if ctx.loss == "chunked"
                                        else "torch.nn.CrossEntropyLoss")]
    if ctx.optimizer == "adamw":  # torch AdamW fused or foreach, as priced (`optimizer_fused`)
        overrides.append(f"optimizer.fused={ctx.optimizer_fused}")
    elif config in TORCHTUNE_FUSED:
        overrides.append("~optimizer.fused")  # torch AdamW's option; bitsandbytes has none
    if recipe.startswith("full"):
        overrides.append(f"optimizer_in_bwd={ctx.optimizer_in_bwd}")
        return recipe, config, overrides
    if ctx.optimizer_in_bwd:
        raise _refuse("torchtune", "optimizer_in_bwd with LoRA (its LoRA recipes do not step in backward)")
    lora = _lora_fields(chosen, "torchtune")
    attn_names = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
    mlp = {"gate_proj", "up_proj", "down_proj"}
    targets = set(lora["targets"])
    unknown = targets - set(attn_names) - mlp - {"lm_head"}
    if unknown or (targets & mlp and not mlp <= targets):
        raise _refuse("torchtune", f"targets {sorted(targets)} (it adapts q/k/v/output_proj, all of the MLP or "
                                   "none, and the output layer)")
    if lora["quant"] not in ("none", "nf4"):
        raise _refuse("torchtune", f"quant={lora['quant']} (its QLoRA is NF4)")
    if lora["rslora"]:
        raise _refuse("torchtune", "rsLoRA scaling")
    if "lm_head" in targets and chosen.spec.tie_word_embeddings:
        raise _refuse("torchtune", "LoRA on the output layer of a model with tied embeddings")
    attn = ",".join(attn_names[t] for t in ("q_proj", "k_proj", "v_proj", "o_proj") if t in targets)
    output = ["model.apply_lora_to_output=True"] if "lm_head" in targets else []
    overrides = [f"model.lora_attn_modules=[{attn}]", f"model.apply_lora_to_mlp={bool(targets & mlp)}",
                 *output, f"model.lora_rank={lora['rank']}",
                 f"model.lora_alpha={lora['alpha']:g}", f"model.lora_dropout={lora['dropout']:g}",
                 *([f"model.use_dora={lora['dora']}"] if lora["dora"] else []), *overrides]
    return recipe, config, overrides


def _torchtune(chosen: Chosen) -> str:
    recipe, config, overrides = torchtune_overrides(chosen)
    lines = [f"# torchtune 0.6: {chosen.method.name} on {chosen.spec.model_id} as planned by peftplan "
             "(download the model with `tune download` first)", f"tune run {recipe} --config {config} \\"]
    lines += [f"  '{item}' \\" for item in overrides[:-1]] + [f"  '{overrides[-1]}'"]
    return "\n".join(lines) + "\n"


def _unsloth(chosen: Chosen) -> str:
    ctx = chosen.ctx
    _require("unsloth", ctx, {"loss": ("fused",), "kbit_prep": ("none",), "precision": ("mixed",),
                              "offload_activations": (False,), "optimizer_in_bwd": (False,),
                              "optimizer": tuple(HF_OPTIM), "shard": ("none",)})
    lora = _lora_fields(chosen, "unsloth")
    if lora["quant"] not in ("none", "nf4"):
        raise _refuse("unsloth", f"quant={lora['quant']} (Unsloth loads 4-bit NF4)")
    if lora["dora"]:
        raise _refuse("unsloth", "DoRA")
    gc = {"none": "False", "recompute": "True", "offload": '"unsloth"'}[ctx.checkpointing]
    lines = [
        f'"""Unsloth SFT of {chosen.spec.model_id}: {chosen.method.name} as planned by peftplan."""',
        "from unsloth import FastLanguageModel  # import before trl and transformers, as Unsloth requires",
        "from trl import SFTConfig, SFTTrainer",
        "",
        "model, tokenizer = FastLanguageModel.from_pretrained(",
        f'    model_name="{chosen.spec.model_id}", max_seq_length={ctx.seq_len},',
        f"    load_in_4bit={lora['quant'] == 'nf4'}, dtype=None,",
        ")",
        "model = FastLanguageModel.get_peft_model(",
        f"    model, r={lora['rank']}, lora_alpha={lora['alpha']:g}, lora_dropout={lora['dropout']:g},",
        f"    target_modules={lora['targets']!r}, bias=\"none\",",
        f"    use_gradient_checkpointing={gc}, use_rslora={lora['rslora']},",
        ")",
        "training_args = SFTConfig(",
        '    output_dir="out",',
        f"    per_device_train_batch_size={ctx.batch_size}, gradient_accumulation_steps=1,",
        f"    max_length={ctx.seq_len}, packing={ctx.packing},",
        f"    bf16={ctx.dtype == 'bf16'}, fp16={ctx.dtype == 'fp16'},",
        f'    optim="{hf_optim(ctx)}",',
        ")",
        *_sft_main("model=model, tokenizer=tokenizer, args=training_args, train_dataset=dataset"),
    ]
    return "\n".join(lines) + "\n"


def _sft_main(trainer_args: str) -> list[str]:
    """The script's entry point: the user's data into TRL's SFTTrainer."""
    return ["", 'if __name__ == "__main__":', "    from datasets import load_dataset", "",
            '    dataset = load_dataset("json", data_files="train.jsonl", split="train")  # your data',
            f"    SFTTrainer({trainer_args}).train()"]


_EMITTERS = {"peft": _peft, "trl": _trl, "axolotl": _axolotl, "llama-factory": _llama_factory,
             "torchtune": _torchtune, "unsloth": _unsloth}
