"""`--dry-run`'s check of a recipe's templates against the model's tokenizer when it is on this machine: each
special-token string is one token, and a preference stage's prompts do not start with BOS twice."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from smaug.common.chat import IM_END, IM_START
from smaug.common.errors import UserError
from smaug.common.paths import looks_local, repo_path
from smaug.training.recipes import is_preference

# A special token in a template or format: ChatML-style `<|...|>`, SentencePiece's `<s>` / `</s>`. Llama-2's
# `[INST]` and `<<SYS>>` are ordinary text to its tokenizer (it was trained on them split into pieces).
SPECIAL_LIKE = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>")
_FORMAT_KEYS = ("prompt_format", "chosen_format", "rejected_format", "format", "no_input_format", "system_format")
_PROMPT_KEYS = ("prompt_format", "format", "no_input_format")
_ADDED_NOTE = (
    "an added token of this tokenizer: whether the model's training used it (a trained embedding) is not visible "
    "from the tokenizer"
)


@dataclass
class TokenCheck:
    text: str  # the special-token string
    ids: list[int]
    added_by_recipe: bool  # listed under `tokens:` (axolotl adds it to the vocabulary if it is new)
    added_to_base: bool = False  # an added (non-core) token of the tokenizer, not its bos/eos/pad/unk

    @property
    def single(self) -> bool:
        return len(self.ids) == 1

    def describe(self) -> str:
        if self.single:
            notes = ["`tokens:` adds nothing"] * self.added_by_recipe + [_ADDED_NOTE] * self.added_to_base
            return f"{self.text} -> id {self.ids[0]} (one token{''.join('; ' + note for note in notes)})"
        if self.added_by_recipe:
            return (
                f"{self.text} -> NEW: not in this tokenizer ({len(self.ids)} pieces); `tokens:` adds it with an "
                "untrained embedding that only this stage's training will train"
            )
        return (
            f"{self.text} -> NOT one token: {len(self.ids)} pieces {self.ids}; the template's boundary is "
            "ordinary text to this model (add it under `tokens:`, or use the model's own template)"
        )


def _template(choice: Any, jinja: Any, tokenizer=None) -> str | None:
    """A chat-template setting's text as axolotl resolves it; without a tokenizer, None for the tokenizer's own."""
    from axolotl.utils.chat_templates import get_chat_template

    if not choice or (tokenizer is None and str(choice).startswith("tokenizer_default")):
        return None
    path = repo_path(str(jinja)) if jinja else None
    try:
        return get_chat_template(str(choice), str(path) if path and path.is_file() else jinja, tokenizer=tokenizer)
    except ValueError:  # an unknown name or no template: axolotl's validation says so
        return None


def _datasets(recipe: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"datasets[{i}] ({d.get('path', '?')})", d) for i, d in enumerate(recipe.get("datasets") or [])]


def template_special_tokens(recipe: dict[str, Any]) -> list[str]:
    """The special-token strings the recipe uses: in its chat templates, `chatml.*` types (axolotl writes ChatML),
    format strings, `special_tokens:` and `tokens:`; none for a raw-text recipe."""
    texts = [_template(recipe.get("chat_template"), recipe.get("chat_template_jinja"))]
    for entry in recipe.get("datasets") or []:
        kind = entry.get("type")
        texts.append(_template(entry.get("chat_template"), entry.get("chat_template_jinja")))
        texts += [IM_START + IM_END] if str(kind).startswith("chatml.") else []
        texts += [kind.get(key) for key in _FORMAT_KEYS] if isinstance(kind, dict) else []
    found = [string for text in texts if isinstance(text, str) for string in SPECIAL_LIKE.findall(text)]
    found += [str(value) for value in (recipe.get("special_tokens") or {}).values()]
    return list(dict.fromkeys(found + [str(value) for value in recipe.get("tokens") or []]))


def check_tokens(recipe: dict[str, Any], tokenizer) -> tuple[list[TokenCheck], list[str]]:
    """The recipe's special-token strings against a tokenizer, and the problems that stop the dry run: BOS twice
    (TRL 1.9 tokenizes a preference stage's prompt text with the tokenizer's special tokens) when a dataset's
    prompt format, or the chat template that renders it (a DPO dataset has none of its own), writes BOS."""
    added = {str(t) for t in recipe.get("tokens") or []}
    core = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token}
    extra = set(tokenizer.get_added_vocab()) - core
    checks = [
        TokenCheck(text, tokenizer.encode(text, add_special_tokens=False), text in added, text in extra)
        for text in template_special_tokens(recipe)
    ]
    bos = tokenizer.bos_token
    if not (is_preference(recipe) and bos and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]):
        return checks, []
    choice, jinja = recipe.get("chat_template") or "tokenizer_default", recipe.get("chat_template_jinja")
    try:
        message = [{"role": "user", "content": "x"}]
        template = _template(choice, jinja, tokenizer)
        rendered = tokenizer.apply_chat_template(
            message, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template this tokenizer cannot render: nothing to compare
        rendered = ""
    twice = []
    for where, entry in _datasets(recipe):
        kind = entry.get("type")
        if isinstance(kind, dict):
            twice += [f"{where} {key}" for key in _PROMPT_KEYS if str(kind.get(key) or "").startswith(bos)]
        elif isinstance(kind, str) and kind.startswith("chat_template") and rendered.startswith(bos):
            twice.append(f"{where} chat_template: {choice}" + (f" ({jinja})" if jinja else ""))
    problem = (
        f"BOS twice: the tokenizer adds {bos} and the prompt text already starts with it ({'; '.join(twice)}); "
        f"TRL 1.9 tokenizes prompt text with special tokens: write no {bos} before the first turn "
        "(recipes/smaug7b_dpop.yml shows how)"
    )
    return checks, [problem] if twice else []


def template_summary(recipe: dict[str, Any]) -> str:
    """How the recipe formats its pairs, in a few words: its chat templates, or raw text."""
    top = recipe.get("chat_template")
    parts = [f"chat_template {top}" + (f" ({recipe.get('chat_template_jinja')})" if top == "jinja" else "")] * bool(top)
    for _, entry in _datasets(recipe):
        kind = entry.get("type")
        if isinstance(kind, str) and kind.startswith("chatml."):
            parts.append("axolotl chatml.* types")
        elif isinstance(kind, dict) and SPECIAL_LIKE.search(" ".join(str(kind.get(k) or "") for k in _FORMAT_KEYS)):
            parts.append("user-defined formats with special tokens")
    return ", ".join(dict.fromkeys(parts)) or "raw text (no chat template)"


def dry_run_lines(recipe: dict[str, Any], indent: str = "  ", where: str = "this recipe") -> list[str]:
    """What `smaug chain run NAME --dry-run` prints about the template's tokens for one stage; a UserError naming
    ``where`` (the stage) when its prompts would start with BOS twice."""
    wanted = template_special_tokens(recipe)
    lines = [f"{indent}template: {template_summary(recipe)}"]
    name = str(recipe.get("tokenizer_config") or recipe.get("base_model") or "")
    if not wanted or not name:
        return lines
    unchecked = f"{indent}special tokens: {', '.join(wanted)} -- not checked: "
    if looks_local(name) and not repo_path(name).is_dir():
        return lines + [unchecked + f"the folder {name} does not exist yet (an earlier stage writes it)"]
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(repo_path(name)) if looks_local(name) else name, local_files_only=True
        )
    except OSError:  # transformers' "not found locally": nothing is downloaded
        why = f"the tokenizer of {name} is not on this machine (a local folder or the Hugging Face cache)"
        return lines + [unchecked + why]
    except Exception as err:  # a broken or partial download: the plan still prints
        return lines + [unchecked + f"cannot load the tokenizer of {name} ({err})"]
    checks, problems = check_tokens(recipe, tokenizer)
    if problems:
        raise UserError(f"{where}: {problems[0]}")
    split = sum(1 for c in checks if not c.single and not c.added_by_recipe)
    new = sum(1 for c in checks if not c.single and c.added_by_recipe)
    verdict = [f"{split} of {len(checks)} NOT one token"] * bool(split)
    verdict += [f"{new} of {len(checks)} NEW (untrained embeddings)"] * bool(new)
    lines.append(f"{indent}special tokens (tokenizer of {name}): {'; '.join(verdict) or 'each is one token'}")
    return lines + [f"{indent}  {check.describe()}" for check in checks]
