"""Tasks peftplan generates itself, so that a fresh clone without ../shared can still bench offline.

All are deterministic for a seed and documented in docs/harness.md:

- `wordgroups` (classification): "Word: tiger / Group:" -> " red" for animals, " blue" for foods. The
  label words are arbitrary, so the base model is at chance (SmolLM2-135M-Instruct: 52% on 40 held-out
  words); the split is by word, so a fine-tuned model must learn the rule, not the words (LoRA: 100%
  after 30 steps of batch 8 on the reference CPU). The quick suite uses it.
- `parity` (classification): "Number: 4817 / Is it even or odd? Answer:" -> " odd". The answer hangs on
  the last digit only, yet SmolLM2-135M-Instruct scores near chance (54% on 100 examples) before
  fine-tuning; a few dozen LoRA steps move it visibly.
- `addition` (generation, exact match): "17 + 58 =" -> " 75".
"""

from __future__ import annotations

import random
from typing import Any


def _task(kind: str, name: str, prompt: str, target: str, **rest: Any) -> dict[str, Any]:
    """A task definition as a suite's `tasks:` entry spells it."""
    return {"kind": kind, "name": f"{name} (generated)", "prompt": prompt, "target": target, **rest}


PARITY = _task("classification", "parity", "Number: {number}\nIs it even or odd? Answer:", "{label}",
               labels={"even": "even", "odd": "odd"})
WORDGROUPS = _task("classification", "wordgroups", "Word: {word}\nGroup:", "{group}",
                   labels={"animal": "red", "food": "blue"})
ANIMALS = (
    "cat dog horse cow sheep goat pig tiger lion bear wolf fox deer rabbit mouse rat eagle owl hawk crow duck "
    "goose swan frog toad snake lizard turtle shark whale dolphin seal otter beaver squirrel camel zebra giraffe "
    "elephant monkey gorilla panda koala kangaroo penguin parrot pigeon bee ant spider moth beetle salmon trout "
    "crab lobster octopus bat hedgehog badger mole donkey mule buffalo bison moose yak llama alpaca leopard "
    "cheetah jaguar hyena raccoon skunk weasel ferret hamster"
).split()
FOODS = (
    "bread rice pasta pizza soup salad cheese butter milk yogurt apple banana orange grape lemon cherry peach "
    "pear plum mango melon potato carrot onion garlic tomato pepper cabbage lettuce spinach bean pea corn wheat "
    "oat cookie cake pie muffin pancake waffle bacon sausage ham steak chicken burger sandwich taco noodle "
    "dumpling sushi curry stew porridge cereal honey jam chocolate candy popcorn pretzel cracker biscuit omelet "
    "toast donut bagel croissant tofu lentil walnut almond peanut cashew raisin"
).split()
ADDITION = _task("generation", "addition", "{a} + {b} =", "{sum}")
DEFINITIONS: dict[str, dict[str, Any]] = {"wordgroups": WORDGROUPS, "parity": PARITY, "addition": ADDITION}


def generate_records(name: str, size: int, seed: int) -> list[dict[str, Any]]:
    """`size` records of the generated task `name`; the same seed gives the same records."""
    rng = random.Random(f"peftplan-{name}-{seed}")
    if name == "wordgroups":  # one record per word (154), at most `size` of them
        records = [{"word": w, "group": "animal"} for w in ANIMALS] + [{"word": w, "group": "food"} for w in FOODS]
        rng.shuffle(records)
        return records[:size]
    if name == "parity":
        numbers = [rng.randint(10, 99_999) for _ in range(size)]
        return [{"number": n, "label": "even" if n % 2 == 0 else "odd"} for n in numbers]
    if name == "addition":
        pairs = [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(size)]
        return [{"a": a, "b": b, "sum": a + b} for a, b in pairs]
    raise ValueError(f"unknown generated task {name!r}")
