"""The dry run's check of a chat template's special tokens against the model's own tokenizer (when it is on this
machine): one token each, split into pieces, new (added by the recipe), and BOS written twice."""

from __future__ import annotations

import copy

import pytest
import yaml

from smaug.common.errors import UserError
from smaug.common.paths import RECIPES_DIR
from smaug.training import chains as C, template_tokens as T
from smaug.training.recipes import load_recipe


def _with_tokenizer(name: str, tokenizer_dir) -> dict:
    return {**load_recipe(name), "base_model": str(tokenizer_dir)}


def _pieces_format(fmt: str) -> dict:
    """A user-defined DPO format whose turn markers the tiny tokenizer does not have."""
    return {
        "path": "x.jsonl",
        "type": {
            "field_prompt": "prompt",
            "prompt_format": fmt,
            "chosen_format": "{chosen}<|end|>",
            "rejected_format": "{rejected}<|end|>",
        },
    }


def test_chatml_tokens_of_a_local_tokenizer_are_single_tokens(tiny_model_dir):
    lines = T.dry_run_lines(_with_tokenizer("smaug34b_dpop.yml", tiny_model_dir))
    text = "\n".join(lines)
    assert lines[0] == "  template: chat_template chatml, axolotl chatml.* types"
    assert f"special tokens (tokenizer of {tiny_model_dir}): each is one token" in text
    assert "<|im_start|> -> id 3 (one token; an added token of this tokenizer" in text
    assert "<|im_end|> -> id 4 (one token)" in text  # the tokenizer's own EOS
    assert "WARNING" not in text


def test_a_template_token_the_tokenizer_splits_is_reported_and_one_the_recipe_adds_is_new(tiny_model_dir):
    recipe = {"base_model": str(tiny_model_dir), "datasets": [_pieces_format("<|user|>\n{prompt}<|end|>\n")]}
    text = "\n".join(T.dry_run_lines(recipe))
    assert "template: user-defined formats with special tokens" in text
    assert "2 of 2 NOT one token" in text
    assert "<|user|> -> NOT one token: 8 pieces" in text and "ordinary text to this model" in text
    recipe["tokens"] = ["<|user|>", "<|end|>"]
    text = "\n".join(T.dry_run_lines(recipe))
    assert "2 of 2 NEW (untrained embeddings)" in text and "NOT one token" not in text
    assert "<|user|> -> NEW: not in this tokenizer (8 pieces); `tokens:` adds it with an untrained embedding" in text


def _doubled_bos(recipe: dict) -> dict:
    """The 7B recipe as it was: its first dataset rendered with the saved template (<s> before the first turn),
    the others with formats that start with <s>."""
    doubled = copy.deepcopy(recipe)
    first, *others = doubled["datasets"]
    first["type"] = "chat_template.default"
    first.update(field_messages="prompt", field_chosen="chosen", field_rejected="rejected")
    for entry in others:
        entry["type"] = {**entry["type"], "prompt_format": "<s>" + entry["type"]["prompt_format"]}
    return doubled


def test_bos_written_by_the_template_and_added_by_the_tokenizer_is_refused(bos_tokenizer, tmp_path):
    from smaug.training.tiny_model import build_tokenizer

    plain, with_bos = build_tokenizer(), bos_tokenizer
    recipe = load_recipe("smaug7b_dpop.yml")  # Llama-2: formats that write no <s>; the saved template is not used
    checks, problems = T.check_tokens(recipe, with_bos)
    assert {c.text for c in checks} == {"</s>"} and all(c.single for c in checks) and problems == []
    doubled = _doubled_bos(recipe)
    (problem,) = T.check_tokens(doubled, with_bos)[1]
    assert problem.startswith("BOS twice: the tokenizer adds <s> and the prompt text already starts with it")
    assert "(abacusai/MetaMath_DPO_FewShot) chat_template: jinja (recipes/templates/llama2_chat.jinja)" in problem
    assert "(Intel/orca_dpo_pairs) prompt_format" in problem
    assert T.check_tokens(doubled, plain)[1] == []  # a tokenizer that adds no BOS: once
    mistral = load_recipe("generated/mistral7b_arc_dpo.yml")
    assert T.check_tokens(mistral, with_bos)[1] == []  # raw text: BOS once
    # the dry run stops on it, naming the stage, for any recipe whose tokenizer is a local folder
    with_bos.save_pretrained(tmp_path / "llama2-like")
    recipes = {"one": recipe, "twice": doubled}
    for name, stage in recipes.items():
        (tmp_path / f"{name}.yml").write_text(yaml.safe_dump({**stage, "base_model": str(tmp_path / "llama2-like")}))
    chains = tmp_path / "chains.yaml"
    chains.write_text(
        yaml.safe_dump({"t": {"hardware": {"accelerator": "cpu"}, "stages": [str(tmp_path / "one.yml")]}})
    )
    plan = C.plan_chain("t", chains_file=chains)
    assert "special tokens (tokenizer of" in C.describe(plan, C.Launch.from_env(plan.hardware, {}))
    chains.write_text(chains.read_text().replace("one.yml", "twice.yml"))
    plan = C.plan_chain("t", chains_file=chains)
    with pytest.raises(UserError, match=r"twice.yml \(stage 1 of chain 't'\): BOS twice: the tokenizer adds <s>"):
        C.describe(plan, C.Launch.from_env(plan.hardware, {}))


def test_raw_text_recipes_have_no_template_and_unavailable_tokenizers_are_said(tiny_model_dir):
    raw = _with_tokenizer("generated/mistral7b_metamath_dpop.yml", tiny_model_dir)
    assert T.template_summary(raw) == "raw text (no chat template)"
    assert set(T.template_special_tokens(raw)) == {"</s>"}  # only the pad token it names
    lines = T.dry_run_lines(load_recipe("smaug34b_sft.yml"))
    assert lines[1].endswith(
        "not checked: the tokenizer of jondurbin/bagel-34b-v0.2 is not on this machine "
        "(a local folder or the Hugging Face cache)"
    )
    lines = T.dry_run_lines(load_recipe("smaug34b_dpop.yml"))
    assert "the folder ./outputs/smaug34b-sft does not exist yet (an earlier stage writes it)" in lines[1]


def test_the_dry_run_prints_the_check_for_each_stage(tiny_model_dir, tmp_path):
    recipe = {**yaml.safe_load((RECIPES_DIR / "cpu" / "tiny_dpop.yml").read_text()), "base_model": str(tiny_model_dir)}
    (tmp_path / "r.yml").write_text(yaml.safe_dump(recipe))
    chains = tmp_path / "chains.yaml"
    chains.write_text(yaml.safe_dump({"t": {"hardware": {"accelerator": "cpu"}, "stages": [str(tmp_path / "r.yml")]}}))
    plan = C.plan_chain("t", chains_file=chains)
    text = C.describe(plan, C.Launch.from_env(plan.hardware, {}))
    assert "  template: chat_template chatml, axolotl chatml.* types\n" in text
    assert f"  special tokens (tokenizer of {tiny_model_dir}): each is one token\n" in text
