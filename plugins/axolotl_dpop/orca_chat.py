"""`type: axolotl_dpop.orca_chat`: the SFT dataset type for `shahules786/orca-chat` (ORCA-Chat, the paper's
"[Es, 2024]").

Its rows are `{"instruction": <system prompt>, "conversation": [{"input": <user turn>, "output": <assistant
turn>}, ...]}` (recipes/DATASETS.md says where that comes from). No axolotl 0.19 type reads that shape: the
`chat_template` type wants one message per list item with a role. This type turns each row into
system/user/assistant messages and is otherwise axolotl's own `chat_template` type, with all its options
(`chat_template`, `roles_to_train`, `train_on_eos`, ...):

    datasets:
      - path: shahules786/orca-chat
        split: train
        type: axolotl_dpop.orca_chat
        chat_template: chatml
        roles_to_train: [assistant]
"""

from __future__ import annotations

from typing import Any

from axolotl.prompt_strategies.chat_template import ChatTemplateStrategy, StrategyLoader
from pydantic import BaseModel

FIELD_SYSTEM = "instruction"
FIELD_TURNS = "conversation"


def orca_chat_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """`instruction` + `conversation` -> chat messages; a row without turns is an error naming the field."""
    turns = row.get(FIELD_TURNS)
    if not isinstance(turns, list) or not turns:
        raise ValueError(
            f"orca-chat row has no `{FIELD_TURNS}` turns (got {type(turns).__name__}); "
            f"expected a list of {{input, output}}"
        )
    messages = []
    system = row.get(FIELD_SYSTEM)
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for turn in turns:
        messages.append({"role": "user", "content": turn["input"]})
        messages.append({"role": "assistant", "content": turn["output"]})
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
        ds_cfg["field_messages"] = FIELD_TURNS
        return super().__call__(tokenizer, cfg, ds_cfg, processor=processor)


load = _OrcaChatLoader()
