"""ChatML (`<|im_start|>role\n...<|im_end|>`): what axolotl's `chat_template: chatml` and `chatml.*` DPO types
produce, so prompts formatted here score what the trainer optimised."""

from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_prompt(user: str, system: str | None = None) -> str:
    """[the system turn,] the user turn and the assistant's opening: what precedes a completion."""
    turns = ([("system", system)] if system else []) + [("user", user)]
    return "".join(f"{IM_START}{role}\n{text}{IM_END}\n" for role, text in turns) + f"{IM_START}assistant\n"
