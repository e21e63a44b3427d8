"""`type: axolotl_dpop.orca_chat`: the SFT dataset type for `shahules786/orca-chat` (the paper's "[Es, 2024]"),
whose rows are `{"instruction": <system prompt>, "conversation": [{"input", "output"}, ...]}`, a shape no
axolotl 0.19 type reads. Otherwise axolotl's `chat_template` type, with all its options."""

from __future__ import annotations

from typing import Any

from axolotl.prompt_strategies.chat_template import ChatTemplateStrategy, StrategyLoader
from pydantic import BaseModel


def orca_chat_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """`instruction` + `conversation` -> chat messages; a row without turns is an error naming the field."""
    turns = row.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise ValueError(
            f"orca-chat row has no `conversation` turns (got {type(turns).__name__}): a list of {{input, output}}"
        )
    system = row.get("instruction")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    for turn in turns:
        messages += [{"role": "user", "content": turn["input"]}, {"role": "assistant", "content": turn["output"]}]
    return messages


class OrcaChatStrategy(ChatTemplateStrategy):
    def _get_messages(self, prompt):
        return orca_chat_messages(prompt)


class _OrcaChatLoader(StrategyLoader):
    def _get_strategy_cls(self, cfg):
        return OrcaChatStrategy

    def __call__(self, tokenizer, cfg, ds_cfg=None, processor=None):
        ds_cfg = dict(ds_cfg.model_dump() if isinstance(ds_cfg, BaseModel) else ds_cfg or {})
        # Batched-input detection reads this field; the messages themselves come from orca_chat_messages.
        return super().__call__(tokenizer, cfg, {**ds_cfg, "field_messages": "conversation"}, processor=processor)


load = _OrcaChatLoader()
