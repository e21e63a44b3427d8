"""The recipes: valid for axolotl (with the DPOP plugin) offline, the paper's settings, generated files up to
date, and every dataset `type:` really parsing rows in that dataset's real schema."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from smaug import chain as C
from smaug import recipes as R
from smaug.paths import RECIPES_DIR, REPO_ROOT

# This file covers the Smaug recipes (recipes/*.yml) and their CPU twin (recipes/cpu/); other folders have their own tests.
ALL = [p for p in R.list_recipes() if p.parent in (RECIPES_DIR, RECIPES_DIR / "cpu")]
GPU_RECIPES = [p for p in ALL if p.parent == RECIPES_DIR]
SMAUG_DPOP = ["smaug34b_dpop.yml", "smaug72b_dpop.yml", "smaug72b_dpop_qlora.yml", "smaug7b_dpop.yml"]
IDS = [R.rel(p) for p in ALL]


def _load(name):
    return R.load_recipe(RECIPES_DIR / name)


def test_the_required_recipes_exist():
    names = {R.rel(p) for p in ALL}
    required = {"smaug34b_sft.yml", "smaug34b_dpop.yml", "smaug72b_dpop.yml", "smaug72b_dpop_qlora.yml",
                "smaug7b_dpo.yml", "smaug7b_dpop.yml", "cpu/tiny_sft.yml", "cpu/tiny_dpop.yml"}
    required |= {f"mistral7b_{d}_{loss}.yml" for d in ("metamath", "arc") for loss in ("dpo", "ipo", "slic", "dpop")}
    required |= {"mistral7b_metamath_dpop_beta0.1.yml", "mistral7b_metamath_dpop_beta1.0.yml",
                 "mistral7b_metamath_dpop_lambda5.yml", "mistral7b_metamath_dpop_lambda500.yml"}
    assert {f"recipes/{n}" for n in required} <= names


def test_committed_generated_recipes_equal_the_generator_output():
    assert R.stale_generated() == [], "run `smaug recipes generate` and commit the result"


def test_generator_merges_and_deletes(tmp_path, monkeypatch):
    base = tmp_path / "_base" / "b.yml"
    base.parent.mkdir()
    base.write_text("# {title} for {recipe}\n# notes: {notes}\na: 1\nnested: {x: 1, y: 2}\nlst: [1, 2]\ngone: 3\n")
    spec = tmp_path / "generate.yaml"
    spec.write_text(yaml.safe_dump({"recipes": {"out.yml": {
        "base": "_base/b.yml", "title": "T", "notes": "N",
        "overrides": {"nested": {"y": 5}, "lst": [9], "gone": None, "new": "v"}}}}))
    monkeypatch.setattr(R, "RECIPES_DIR", tmp_path)
    text = R.generated_recipes(spec)["out.yml"]
    assert text.startswith("# T for out.yml\n# notes: N\n")
    assert yaml.safe_load(text) == {"a": 1, "nested": {"x": 1, "y": 5}, "lst": [9], "new": "v"}


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_recipe_passes_axolotl_validation_with_the_plugin(path):
    gpu = path in GPU_RECIPES
    recipe = R.load_recipe(path)
    assert R.needs_gpu(recipe) == gpu
    cfg = R.validate_offline(path, capabilities=R.H100_NODE_CAPABILITIES if gpu else R.CPU_CAPABILITIES)
    assert R.PLUGIN in recipe["plugins"], "every recipe lists the plugin (it writes smaug_provenance.json)"
    if R.is_dpop(recipe):
        # the plugin mapped rl: dpop onto axolotl's DPO trainer path and kept lambda
        assert cfg["rl"] == "dpo" and cfg["dpop"] is True and cfg["dpop_lambda"] == float(recipe["dpop_lambda"])
    assert cfg["save_steps"] and cfg["auto_resume_from_checkpoints"] is True
    if gpu:
        assert cfg["attn_implementation"] == "flash_attention_2"
        assert cfg["bf16"] is True


@pytest.mark.parametrize("name", SMAUG_DPOP + ["mistral7b_metamath_dpop.yml", "mistral7b_arc_dpop.yml"])
def test_every_dpop_stage_uses_the_paper_settings(name):
    recipe = _load(name)
    assert recipe["rl"] == "dpop"
    assert recipe["rl_beta"] == 0.3 and recipe["dpop_lambda"] == 50
    assert recipe["learning_rate"] == 5e-5 and recipe["max_steps"] == 1000
    assert "adamw" in recipe["optimizer"]


def _without(recipe, *keys):
    return {k: v for k, v in recipe.items() if k not in keys}


def test_7b_ablation_differs_only_in_the_loss():
    dpo, dpop = _load("smaug7b_dpo.yml"), _load("smaug7b_dpop.yml")
    assert dpo["rl"] == "dpo" and "dpop_lambda" not in dpo and dpop["rl"] == "dpop"
    assert dpo["base_model"] == "meta-llama/Llama-2-7b-chat-hf"
    assert _without(dpo, "rl", "dpop_lambda", "output_dir") == _without(dpop, "rl", "dpop_lambda", "output_dir")
    assert [d["path"] for d in dpop["datasets"]] == [d["path"] for d in _load("smaug34b_dpop.yml")["datasets"]]


@pytest.mark.parametrize("data", ["metamath", "arc"])
def test_mistral_loss_comparison_differs_only_in_the_loss(data):
    runs = {loss: _load(f"mistral7b_{data}_{loss}.yml") for loss in ("dpo", "ipo", "slic", "dpop")}
    assert runs["ipo"]["dpo_loss_type"] == ["ipo"] and runs["slic"]["dpo_loss_type"] == ["hinge"]
    assert all(r["rl"] == "dpo" for k, r in runs.items() if k != "dpop")
    shared = {k: _without(r, "rl", "dpop_lambda", "dpo_loss_type", "output_dir") for k, r in runs.items()}
    assert len({json.dumps(s, sort_keys=True) for s in shared.values()}) == 1
    expected = {"metamath": "abacusai/MetaMath_DPO_FewShot", "arc": "abacusai/ARC_DPO_FewShot"}[data]
    assert [d["path"] for d in runs["dpo"]["datasets"]] == [expected]


@pytest.mark.parametrize("name,key,value", [
    ("mistral7b_metamath_dpop_beta0.1.yml", "rl_beta", 0.1),
    ("mistral7b_metamath_dpop_beta1.0.yml", "rl_beta", 1.0),
    ("mistral7b_metamath_dpop_lambda5.yml", "dpop_lambda", 5),
    ("mistral7b_metamath_dpop_lambda500.yml", "dpop_lambda", 500),
])
def test_sweeps_change_exactly_one_setting(name, key, value):
    point, centre = _load(name), _load("mistral7b_metamath_dpop.yml")
    assert point[key] == value
    assert _without(point, key, "output_dir") == _without(centre, key, "output_dir")


@pytest.mark.parametrize("path", GPU_RECIPES, ids=[R.rel(p) for p in GPU_RECIPES])
def test_gpu_recipe_header_hardware_template_and_revision(path):
    text = path.read_text()
    recipe = yaml.safe_load(text)
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert re.search(r"#\s+1\. ", header) and re.search(r"#\s+2\. ", header), "numbered steps at the top"
    # hardware needs are stated once, in recipes/chains.yaml; the header points at its chain's entry
    chain = re.search(r"`hardware:` of chain (\S+) in recipes/chains\.yaml", header)
    assert chain and R.rel(path).removeprefix("recipes/") in C.load_chains()[chain.group(1)]["stages"]
    assert not re.search(r"\d\s*(GB|TB|GiB|TiB) (of )?host RAM", header), "host RAM is stated in chains.yaml only"
    assert recipe["chat_template"] not in (None, "tokenizer_default"), "chat template chosen explicitly"
    if recipe["chat_template"] == "jinja":
        assert (REPO_ROOT / recipe["chat_template_jinja"]).is_file()
    assert recipe.get("revision_of_model") or "unpinned" in header
    if recipe.get("adapter") == "qlora":
        assert recipe["load_in_4bit"] is True and "deepspeed" not in recipe
    else:
        zero = json.loads((REPO_ROOT / recipe["deepspeed"]).read_text())
        assert zero["zero_optimization"]["stage"] == 3 and zero["bf16"]["enabled"] is True


def test_chat_templates_per_base_model():
    by_base = {}
    for path in GPU_RECIPES:
        recipe = R.load_recipe(path)
        by_base.setdefault(recipe["base_model"], set()).add(recipe["chat_template"])
    assert by_base["jondurbin/bagel-34b-v0.2"] == {"chatml"}
    assert by_base["moreh/MoMo-72B-lora-1.8.7-DPO"] == {"chatml"}  # Qwen
    assert by_base["meta-llama/Llama-2-7b-chat-hf"] == {"jinja"}  # recipes/templates/llama2_chat.jinja
    assert by_base["mistralai/Mistral-7B-v0.1"] == {"mistral_v1"}


def test_72b_full_recipe_offloads_and_qlora_states_its_hardware():
    full = _load("smaug72b_dpop.yml")
    zero = json.loads((REPO_ROOT / full["deepspeed"]).read_text())["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    qlora_text = (RECIPES_DIR / "smaug72b_dpop_qlora.yml").read_text()
    qlora = yaml.safe_load(qlora_text)
    assert qlora["adapter"] == "qlora" and qlora["load_in_4bit"] is True
    assert "`hardware:` of chain smaug-72b-qlora in recipes/chains.yaml" in qlora_text
    assert C.load_chains()["smaug-72b-qlora"]["hardware"]["gpus"] == 1


# ------------------------------------------------------------------------------------------------------------
# each dataset type parses rows in that dataset's real schema

DPO_ROWS = {
    "abacusai/MetaMath_DPO_FewShot": {"prompt": "Q: Tom has 3 apples and buys 4 more. How many?\nA:",
                                      "chosen": "3 + 4 = 7. The answer is 7.", "rejected": "3 + 4 = 8. The answer is 8."},
    "abacusai/ARC_DPO_FewShot": {"prompt": "Question: Which gas do plants absorb?\nAnswer:",
                                 "chosen": "carbon dioxide", "rejected": "neon"},
    "abacusai/HellaSwag_DPO_FewShot": {"prompt": "A man is mowing the lawn. He",
                                       "chosen": "pushes the mower along the grass.", "rejected": "eats the mower."},
    "Intel/orca_dpo_pairs": {"system": "You are an AI assistant. Think step by step.",
                             "question": "Translate 'chat' from French.", "chosen": "It means cat.",
                             "rejected": "It means dog."},
    "jondurbin/truthy-dpo-v0.1": {"id": "t1", "source": "truthy", "system": "You are an unbiased assistant.",
                                  "prompt": "Do you have a body?", "chosen": "No, I am an AI without a body.",
                                  "rejected": "Yes, I have two hands."},
    "HuggingFaceH4/ultrafeedback_binarized": {
        "prompt": "Write a haiku about rain.", "prompt_id": "p1",
        "chosen": [{"role": "user", "content": "Write a haiku about rain."},
                   {"role": "assistant", "content": "Soft rain on the roof"}],
        "rejected": [{"role": "user", "content": "Write a haiku about rain."},
                     {"role": "assistant", "content": "Rain is wet."}],
        "messages": [{"role": "user", "content": "Write a haiku about rain."},
                     {"role": "assistant", "content": "Soft rain on the roof"}],
        "score_chosen": 8.0, "score_rejected": 3.0},
}
SFT_ROWS = {
    "meta-math/MetaMathQA": {"type": "GSM_Rephrased", "query": "What is 12 times 3?", "original_question": "12*3?",
                             "response": "12 * 3 = 36. The answer is: 36"},
    "Open-Orca/SlimOrca": {"conversations": [
        {"from": "system", "value": "You are a helpful assistant.", "weight": None},
        {"from": "human", "value": "Name a primary colour.", "weight": 0.0},
        {"from": "gpt", "value": "Red is a primary colour.", "weight": 1.0}]},
    "anon8231489123/ShareGPT_Vicuna_unfiltered": {"id": "s1", "conversations": [
        {"from": "human", "value": "Hello, who are you?"}, {"from": "gpt", "value": "I am a language model."}]},
}
CHAT_MARKER = {"chatml": "<|im_start|>user", "jinja": "[INST]", "mistral_v1": "[INST]"}


def _local_rows(path):
    return [json.loads(line) for line in (REPO_ROOT / path).read_text().splitlines()[:2]]


def _dataset_entries(kind):
    seen, out = set(), []
    for path in ALL:
        recipe = R.load_recipe(path)
        if R.is_dpo_type(recipe) != (kind == "dpo"):
            continue
        for index, entry in enumerate(recipe["datasets"]):
            key = (entry["path"], json.dumps(entry, sort_keys=True), recipe.get("chat_template"))
            if key not in seen:
                seen.add(key)
                out.append(pytest.param(path, index, id=f"{R.rel(path)}:{entry['path'].split('/')[-1]}"))
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from smaug.tiny import build_tokenizer

    return build_tokenizer()


def _rows_for(entry, table):
    if entry["path"].startswith("recipes/"):
        return _local_rows(entry["path"])
    assert entry["path"] in table, f"no fixture row in the real schema of {entry['path']}: add one"
    return [table[entry["path"]]]


@pytest.mark.parametrize("path,index", _dataset_entries("dpo"))
def test_dpo_dataset_type_parses_the_real_schema(path, index, tokenizer, monkeypatch):
    from axolotl.prompt_strategies.dpo import load as load_dpo
    from axolotl.utils.data.rl import _map_dataset
    from datasets import Dataset

    monkeypatch.chdir(REPO_ROOT)  # recipe paths (jinja templates, data files) are relative to the repo root
    recipe = R.load_recipe(path)
    cfg = R.validate_offline(path)
    entry = recipe["datasets"][index]
    rows = _rows_for(entry, DPO_ROWS)
    type_name = "user_defined.default" if isinstance(entry["type"], dict) else entry["type"]
    loaded = load_dpo(type_name, cfg, dataset_idx=index)  # what axolotl's RL data loader calls
    assert loaded is not None, f"axolotl has no DPO type {type_name!r}"
    transform, map_kwargs = loaded if isinstance(loaded, tuple) else (loaded, {})
    map_kwargs = {k: [c for c in v if c in rows[0]] if k == "remove_columns" else v for k, v in map_kwargs.items()}
    out = _map_dataset(cfg, Dataset.from_list(rows), transform, tokenizer, **map_kwargs)
    for row, parsed in zip(rows, out):
        prompt_text = row.get("question") or row["prompt"]
        chosen = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][-1]["content"]
        rejected = row["rejected"] if isinstance(row["rejected"], str) else row["rejected"][-1]["content"]
        assert prompt_text.strip() in parsed["prompt"]
        assert chosen in parsed["chosen"] and rejected not in parsed["chosen"]
        assert rejected in parsed["rejected"] and chosen not in parsed["rejected"]
        assert CHAT_MARKER[recipe["chat_template"]] in parsed["prompt"]
        if row.get("system") and (type_name.startswith("chatml.") or type_name == "user_defined.default"):
            assert row["system"] in parsed["prompt"], "the system prompt is kept"


@pytest.mark.parametrize("path,index", _dataset_entries("sft"))
def test_sft_dataset_type_parses_the_real_schema(path, index, tokenizer, monkeypatch):
    from axolotl.utils.data.wrappers import get_dataset_wrapper
    from axolotl.utils.dict import DictDefault
    from datasets import Dataset

    monkeypatch.chdir(REPO_ROOT)
    recipe = R.load_recipe(path)
    cfg = R.validate_offline(path)
    entry = recipe["datasets"][index]
    rows = _rows_for(entry, SFT_ROWS)
    ds_cfg = DictDefault(cfg["datasets"][index])
    base_type = None if isinstance(entry["type"], dict) else entry["type"].split(".")[0]
    wrapped, _ = get_dataset_wrapper(ds_cfg, tokenizer, cfg, base_type, Dataset.from_list(rows))
    for row, tokens in zip(rows, wrapped):
        if "conversations" in row:
            question, answer = row["conversations"][-2]["value"], row["conversations"][-1]["value"]
        elif "messages" in row:
            question, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        else:
            question, answer = row["query"], row["response"]
        text = tokenizer.decode(tokens["input_ids"])
        trained = tokenizer.decode([t for t, label in zip(tokens["input_ids"], tokens["labels"]) if label != -100])
        assert question in text and answer in text
        assert answer in trained and question not in trained, "loss on the answer only"
        assert "<|im_start|>user" in text


def test_cli_generate_check_and_validate(capsys):
    from smaug.cli import main

    assert main(["recipes", "generate", "--check"]) == 0
    assert main(["recipes", "validate", "recipes/smaug34b_dpop.yml", "cpu/tiny_dpop.yml"]) == 0
    out = capsys.readouterr().out
    assert "ok  recipes/smaug34b_dpop.yml" in out and "ok  recipes/cpu/tiny_dpop.yml" in out


def test_validation_errors_name_the_recipe(tmp_path):
    bad = yaml.safe_load((RECIPES_DIR / "smaug34b_dpop.yml").read_text())
    bad["dpop_lambda"] = -1
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(R.UserError, match="bad.yml: axolotl rejects this recipe: .*dpop_lambda"):
        R.validate_offline(path)
