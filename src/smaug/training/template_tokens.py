"""Does the model's tokenizer know the chat template's special tokens? (`smaug chain run NAME --dry-run`)

A chat template marks turns with strings such as ChatML's `<|im_start|>` / `<|im_end|>` or Llama-2's `<s>` /
`</s>`. The template only works as trained when each is ONE token of the model's tokenizer with a trained
embedding: a string the tokenizer splits into pieces is ordinary text to the model, and a token that the
recipe adds (`tokens:`) starts from an untrained embedding. For every stage whose tokenizer is on this machine
(a local folder, or the Hugging Face cache; nothing is downloaded) the dry run lists each such string with its
token id, or says that it is split or new. It also flags a BOS token that would be there twice: TRL 1.9
tokenizes the rendered prompt text with the tokenizer's special tokens, so a template that writes BOS itself
gets a second one from a tokenizer that adds BOS.

Raw-text recipes (the Mistral-7B ablation: user-defined formats that pass prompt and completion through)
have nothing to check.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smaug.common.chat import IM_END, IM_START
from smaug.common.paths import looks_local, repo_path

# What a special token looks like in a template or format string: ChatML-style `<|...|>` and SentencePiece's
# `<s>` / `</s>`. Llama-2's `[INST]` and `<<SYS>>` are ordinary text to Llama-2's tokenizer (it was trained on
# them split into pieces), so they are not looked for.
SPECIAL_LIKE = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>")
# The format strings of axolotl's user-defined types (DPO and SFT).
_FORMAT_KEYS = ("prompt_format", "chosen_format", "rejected_format", "format", "no_input_format", "system_format")
_CHATML_TYPES = ("chatml.",)  # axolotl's chatml.* DPO types write ChatML themselves
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


@dataclass
class TokenCheck:
    text: str  # the special-token string
    source: str  # where the recipe uses it
    ids: list[int]
    added_by_recipe: bool  # listed under `tokens:` (axolotl adds it to the vocabulary if it is new)
    added_to_base: bool = False  # an added (non-core) token of the tokenizer, not its bos/eos/pad/unk

    @property
    def single(self) -> bool:
        return len(self.ids) == 1

    def describe(self) -> str:
        if self.single:
            note = "; `tokens:` adds nothing" if self.added_by_recipe else ""
            if self.added_to_base:
                note += (
                    "; an added token of this tokenizer: whether the model's training used it (a trained "
                    "embedding) is not visible from the tokenizer"
                )
            return f"{self.text} -> id {self.ids[0]} (one token{note})"
        if self.added_by_recipe:
            return (
                f"{self.text} -> NEW: not in this tokenizer ({len(self.ids)} pieces); `tokens:` adds it with an "
                "untrained embedding that only this stage's training will train"
            )
        return (
            f"{self.text} -> NOT one token: {len(self.ids)} pieces {self.ids}; the template's boundary is "
            "ordinary text to this model (add it under `tokens:`, or use the model's own template)"
        )


def _axolotl_template(name: str) -> str | None:
    """The text of one of axolotl's named chat templates, read from its package without importing axolotl."""
    spec = importlib.util.find_spec("axolotl")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "utils" / "chat_templates" / "templates" / f"{name}.jinja"
    return path.read_text() if path.is_file() else None


def _template_text(choice: Any, jinja: Any) -> str | None:
    if not choice or choice == "tokenizer_default" or str(choice).startswith("tokenizer_default"):
        return None  # the tokenizer's own template: its tokens are its own
    if choice == "jinja":
        if not jinja:
            return None
        path = repo_path(str(jinja))
        return path.read_text() if path.is_file() else str(jinja)
    return _axolotl_template(str(choice))


def template_texts(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, text) for every chat template, format string and special-token setting the recipe uses."""
    texts: list[tuple[str, str]] = []
    top = _template_text(recipe.get("chat_template"), recipe.get("chat_template_jinja"))
    if top:
        texts.append((f"chat_template: {recipe.get('chat_template')}", top))
    for index, entry in enumerate(recipe.get("datasets") or []):
        where = f"datasets[{index}] ({entry.get('path', '?')})"
        own = _template_text(entry.get("chat_template"), entry.get("chat_template_jinja"))
        if own:
            texts.append((f"{where} chat_template: {entry.get('chat_template')}", own))
        kind = entry.get("type")
        if isinstance(kind, str) and kind.startswith(_CHATML_TYPES):
            texts.append((f"{where} type: {kind}", IM_START + IM_END))
        if isinstance(kind, dict):
            for key in _FORMAT_KEYS:
                if isinstance(kind.get(key), str):
                    texts.append((f"{where} {key}", kind[key]))
    for key, value in (recipe.get("special_tokens") or {}).items():
        texts.append((f"special_tokens.{key}", str(value)))
    for value in recipe.get("tokens") or []:
        texts.append(("tokens", str(value)))
    return texts


def template_special_tokens(recipe: dict[str, Any]) -> dict[str, str]:
    """{special-token string: the first place the recipe uses it}; empty for a raw-text recipe."""
    found: dict[str, str] = {}
    for where, text in template_texts(recipe):
        strings = [text] if where.startswith(("special_tokens", "tokens")) else SPECIAL_LIKE.findall(text)
        for string in strings:
            found.setdefault(string, where)
    return found


def prompt_starts(recipe: dict[str, Any], tokenizer) -> list[tuple[str, str]]:
    """(where, text) of how each prompt begins: the rendered templates (one user turn) and the prompt formats."""
    starts = []
    message = [{"role": "user", "content": "x"}]
    for where, text in template_texts(recipe):
        if "chat_template" in where:
            try:
                rendered = tokenizer.apply_chat_template(
                    message, chat_template=text, tokenize=False, add_generation_prompt=True
                )
            except Exception as err:  # a template this tokenizer cannot render: say so, do not stop the plan
                starts.append((where, f"<cannot render: {err}>"))
                continue
            starts.append((where, rendered))
        elif where.endswith(("prompt_format", " format", "no_input_format")):
            starts.append((where, text))
    return starts


def check_tokens(recipe: dict[str, Any], tokenizer) -> tuple[list[TokenCheck], list[str]]:
    """The recipe's special-token strings against a tokenizer, and warnings (BOS twice)."""
    added = {str(t) for t in recipe.get("tokens") or []}
    own = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token}
    extra = set(tokenizer.get_added_vocab()) - own
    checks = [
        TokenCheck(text, where, tokenizer.encode(text, add_special_tokens=False), text in added, text in extra)
        for text, where in template_special_tokens(recipe).items()
    ]
    warnings = []
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos:
        twice = [where for where, text in prompt_starts(recipe, tokenizer) if text.startswith(bos)]
        if twice:
            warnings.append(
                f"BOS twice: the tokenizer adds {bos} and the prompt text already starts with it "
                f"({'; '.join(twice)}); TRL 1.9 tokenizes prompt text with special tokens"
            )
    return checks, warnings


def tokenizer_source(recipe: dict[str, Any]) -> tuple[str, Path | None]:
    """(name, local folder or cached file) of the recipe's tokenizer; the second is None if it is not here."""
    name = str(recipe.get("tokenizer_config") or recipe.get("base_model") or "")
    if not name:
        return name, None
    local = repo_path(name)
    if local.is_dir():
        return name, local if any((local / f).is_file() for f in _TOKENIZER_FILES) else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return name, None
    for filename in _TOKENIZER_FILES:
        try:
            cached = try_to_load_from_cache(name, filename)
        except Exception:  # not a valid repo id: nothing cached under it
            return name, None
        if isinstance(cached, str):
            return name, Path(cached)
    return name, None


def load_local_tokenizer(name: str, found: Path):
    from transformers import AutoTokenizer

    source = str(found) if found.is_dir() else name
    return AutoTokenizer.from_pretrained(source, local_files_only=True)


def template_summary(recipe: dict[str, Any]) -> str:
    """How the recipe formats its pairs, in a few words: its chat templates, or raw text."""
    parts = []
    if recipe.get("chat_template"):
        jinja = f" ({recipe['chat_template_jinja']})" if recipe["chat_template"] == "jinja" else ""
        parts.append(f"chat_template {recipe['chat_template']}{jinja}")
    for entry in recipe.get("datasets") or []:
        kind = entry.get("type")
        if entry.get("chat_template"):
            part = f"dataset chat_template {entry['chat_template']}"
        elif isinstance(kind, str) and kind.startswith(_CHATML_TYPES):
            part = "axolotl chatml.* types"
        elif isinstance(kind, dict):
            formats = " ".join(str(kind.get(key) or "") for key in _FORMAT_KEYS)
            part = "user-defined formats with special tokens" if SPECIAL_LIKE.search(formats) else None
        else:
            part = None
        if part and part not in parts:
            parts.append(part)
    return ", ".join(parts) if parts else "raw text (no chat template)"


def dry_run_lines(recipe: dict[str, Any], indent: str = "  ") -> list[str]:
    """What `smaug chain run NAME --dry-run` prints about the template's tokens for one stage."""
    wanted = template_special_tokens(recipe)
    lines = [f"{indent}template: {template_summary(recipe)}"]
    if not wanted:
        return lines
    name, found = tokenizer_source(recipe)
    listed = ", ".join(wanted)
    if found is None:
        where = (
            f"the folder {name} does not exist yet (an earlier stage writes it)"
            if looks_local(name)
            else f"the tokenizer of {name} is not on this machine (a local folder or the Hugging Face cache)"
        )
        return lines + [f"{indent}special tokens: {listed} -- not checked: {where}"]
    try:
        tokenizer = load_local_tokenizer(name, found)
    except Exception as err:  # a broken or partial download: the plan still prints
        return lines + [f"{indent}special tokens: {listed} -- not checked: cannot load the tokenizer of {name} ({err})"]
    checks, warnings = check_tokens(recipe, tokenizer)
    split = sum(1 for c in checks if not c.single and not c.added_by_recipe)
    new = sum(1 for c in checks if not c.single and c.added_by_recipe)
    verdict = (
        "; ".join(
            part
            for part in (
                f"{split} of {len(checks)} NOT one token" if split else "",
                f"{new} of {len(checks)} NEW (untrained embeddings)" if new else "",
            )
            if part
        )
        or "each is one token"
    )
    lines.append(f"{indent}special tokens (tokenizer of {name}): {verdict}")
    lines += [f"{indent}  {check.describe()}" for check in checks]
    lines += [f"{indent}  WARNING {warning}" for warning in warnings]
    return lines
