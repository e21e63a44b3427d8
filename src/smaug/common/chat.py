"""The ChatML format (`<|im_start|>role\n...<|im_end|>`), spelled once.

axolotl's `chat_template: chatml` and the `chatml.*` DPO types produce exactly this text; the tiny test model
ships this Jinja template, MT-Bench offers it by name, and the log-prob analysis and `make reproduce` format
prompts with `chatml_prompt` so that their numbers are those the trainer optimised."""

from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def chatml_prompt(user: str, system: str | None = None) -> str:
    """[system turn,] the user turn and the assistant's opening: what precedes a completion."""
    return (chatml_turn("system", system) if system else "") + chatml_turn("user", user) + f"{IM_START}assistant\n"
