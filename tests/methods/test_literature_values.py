"""Trainable-parameter counts checked by hand against figures from the PEFT literature."""

from __future__ import annotations

from peftplan.methods import get_method
from peftplan.models import get_spec, spec_from_config


def count(model_id: str, method: str, **values) -> int:
    m = get_method(method)
    return m.trainable_params(get_spec(model_id), m.make_config(**values))


def test_single_4096_square_matrix_rank_8() -> None:
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 4096, "num_hidden_layers": 1, "num_attention_heads": 32, "num_key_value_heads": 32,
        "vocab_size": 32, "max_position_embeddings": 64,
    }
    spec = spec_from_config(config, model_id="one-layer")
    lora = get_method("lora")
    assert lora.trainable_params(spec, lora.make_config(rank=8, targets="q_proj")) == 65_536


def test_llama2_7b_qkvo_rank_8() -> None:
    assert count("meta-llama/Llama-2-7b-hf", "lora", rank=8, targets="q_proj,k_proj,v_proj,o_proj") == 8_388_608


def test_llama32_3b_qv_rank_32() -> None:
    assert count("meta-llama/Llama-3.2-3B", "lora", rank=32, targets=["q_proj", "v_proj"]) == 9_175_040


def test_prompt_tuning_200_tokens_llama32_3b() -> None:
    assert count("meta-llama/Llama-3.2-3B", "prompt", virtual_tokens=200) == 614_400


def test_llama31_8b_rank_16_all_linear() -> None:
    # STACK.md: LoRA r16 all-linear on Llama-3.1-8B adds 41,943,040 trainable parameters.
    assert count("meta-llama/Llama-3.1-8B", "lora", rank=16, targets="all-linear") == 41_943_040
