"""The recipes: valid for axolotl (with the DPOP plugin) offline, the paper's settings, generated files up to
date, and every dataset `type:` really parsing rows in that dataset's real schema."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from smaug.common.paths import RECIPES_DIR, REPO_ROOT, rel
from smaug.training import chains as C
from smaug.training import generate as G
from smaug.training import recipes as R
from smaug.training.template_tokens import template_summary

PLUGIN = "axolotl_dpop.DPOPPlugin"

# This file covers the Smaug recipes (recipes/*.yml) and their CPU twin (recipes/cpu/); other folders have their own tests.
ALL = [p for p in R.list_recipes() if p.parent in (RECIPES_DIR, RECIPES_DIR / "cpu")]
GPU_RECIPES = [p for p in ALL if p.parent == RECIPES_DIR]
SMAUG_DPOP = ["smaug34b_dpop.yml", "smaug72b_dpop.yml", "smaug72b_dpop_qlora.yml", "smaug7b_dpop.yml"]
IDS = [rel(p) for p in ALL]


def _load(name):
    return R.load_recipe(RECIPES_DIR / name)


def is_raw_text(recipe):
    return template_summary(recipe).startswith("raw text")


def test_the_required_recipes_exist():
    names = {rel(p) for p in ALL}
    required = {
        "smaug34b_sft.yml",
        "smaug34b_dpop.yml",
        "smaug72b_dpop.yml",
        "smaug72b_dpop_qlora.yml",
        "smaug7b_dpo.yml",
        "smaug7b_dpop.yml",
        "cpu/tiny_sft.yml",
        "cpu/tiny_dpop.yml",
    }
    required |= {
        f"mistral7b_{d}_{loss}.yml"
        for d in ("metamath", "arc")
        for loss in ("dpo", "ipo", "slic", "slic_hinge", "dpop")
    }
    assert {f"recipes/{n}" for n in required} <= names


def test_committed_generated_recipes_equal_the_generator_output():
    assert G.stale_generated() == [], "run `smaug recipes generate` and commit the result"


def _spec(tmp_path, monkeypatch, grids, losses=None):
    base = tmp_path / "_base" / "b.yml"
    base.parent.mkdir(exist_ok=True)
    base.write_text(
        "# {title} for {recipe}\n# notes: {notes}\n# in: {chains}; {reproduces}\n#{loss_settings}\n"
        "a: 1\nk: 0.3\nlam: 50\nnested: {x: 1, y: 2}\ndatasets: []\nout: PLACEHOLDER\n"
    )
    spec = tmp_path / "generate.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "datasets": {"d1": {"title": "D1", "path": "org/d1"}, "d2": {"title": "D2", "path": "org/d2"}},
                "losses": losses
                or {
                    "plain": {
                        "title": "Plain",
                        "notes": "N",
                        "overrides": {"lam": None, "nested": {"y": 5}},
                        "settings": {"nested": "our assumption: why"},
                    },
                    "pos": {"title": "Pos", "overrides": {}},
                },
                "axes": {"beta": "k", "lambda": "lam"},
                "grids": grids,
            }
        )
    )
    monkeypatch.setattr(G, "RECIPES_DIR", tmp_path)
    return spec


def test_generator_writes_each_cell_once_with_every_figure_and_chain(tmp_path, monkeypatch):
    spec = _spec(
        tmp_path,
        monkeypatch,
        {
            "g": {
                "base": "_base/b.yml",
                "file": "g_{dataset}_{loss}{point}.yml",
                "output_dir": "o/{name}",
                "dataset_entry": {"split": "train", "type": {"prompt_format": "{prompt}"}},
                "title": "T {dataset} {loss} ({settings})",
                "matrices": [
                    {"reproduces": "Fig A", "chain": "ca", "datasets": ["d1", "d2"], "losses": ["plain", "pos"]},
                    {"reproduces": "Fig B", "chain": "cb", "datasets": ["d1"], "losses": ["pos"], "lambda": [5, 50]},
                ],
            }
        },
    )
    cells = G.generated_cells(spec)
    assert sorted(cells) == ["g_d1_plain.yml", "g_d1_pos.yml", "g_d1_pos_lambda5.yml", "g_d2_plain.yml", "g_d2_pos.yml"]
    shared = cells["g_d1_pos.yml"]  # the centre of the lambda sweep is Fig A's cell: one recipe, both chains
    assert shared.chains == ["ca", "cb"] and shared.reproduces == ["Fig A", "Fig B"]
    texts = G.generated_recipes(spec)
    plain = yaml.safe_load(texts["g_d2_plain.yml"])
    assert plain == {
        "a": 1,
        "k": 0.3,
        "nested": {"x": 1, "y": 5},
        "datasets": [{"path": "org/d2", "split": "train", "type": {"prompt_format": "{prompt}"}}],
        "out": "PLACEHOLDER",
        "output_dir": "o/g_d2_plain",
    }
    assert texts["g_d2_plain.yml"].startswith(
        "# T D2 Plain (k 0.3) for g_d2_plain.yml\n# notes: N\n# in: ca; Fig A\n#   nested: our assumption: why\n"
    )
    assert yaml.safe_load(texts["g_d1_pos_lambda5.yml"])["lam"] == 5
    assert "# in: ca, cb; Fig A; Fig B" in texts["g_d1_pos.yml"]


def test_generator_refuses_a_sweep_over_a_loss_without_that_setting(tmp_path, monkeypatch):
    spec = _spec(
        tmp_path,
        monkeypatch,
        {
            "g": {
                "base": "_base/b.yml",
                "file": "g_{loss}{point}.yml",
                "title": "T",
                "matrices": [{"reproduces": "F", "chain": "c", "losses": ["plain"], "lambda": [5]}],
            }
        },
    )
    with pytest.raises(R.UserError, match="the lambda axis sets `lam`, which the plain loss does not use"):
        G.generated_recipes(spec)
    spec = _spec(
        tmp_path,
        monkeypatch,
        {
            "g": {
                "base": "_base/b.yml",
                "file": "g.yml",
                "title": "T",
                "matrices": [{"reproduces": "F", "chain": "c", "losses": ["plain", "pos"]}],
            }
        },
    )
    with pytest.raises(R.UserError, match="two different cells both write recipes/g.yml"):
        G.generated_recipes(spec)


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_recipe_passes_axolotl_validation_with_the_plugin(path):
    gpu = path in GPU_RECIPES
    recipe = R.load_recipe(path)
    assert R.needs_gpu(recipe) == gpu
    cfg = R.validate_offline(path, capabilities=R.H100_NODE_CAPABILITIES if gpu else R.CPU_CAPABILITIES)
    assert PLUGIN in recipe["plugins"], "every recipe lists the plugin (it writes smaug_provenance.json)"
    if recipe.get("rl") == "dpop":
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


MISTRAL_LOSSES = ("dpo", "ipo", "slic", "slic_hinge", "dpop")
LOSS_KEYS = ("rl", "dpop_lambda", "slic_lambda", "dpo_loss_type", "output_dir")


@pytest.mark.parametrize("data", ["metamath", "arc"])
def test_mistral_loss_comparison_differs_only_in_the_loss(data):
    runs = {loss: _load(f"mistral7b_{data}_{loss}.yml") for loss in MISTRAL_LOSSES}
    assert runs["ipo"]["dpo_loss_type"] == ["ipo"] and runs["slic_hinge"]["dpo_loss_type"] == ["hinge"]
    assert runs["slic"]["rl"] == "slic" and "dpo_loss_type" not in runs["slic"]  # the paper's SLiC, the plugin's
    assert runs["dpop"]["rl"] == "dpop" and {runs[k]["rl"] for k in ("dpo", "ipo", "slic_hinge")} == {"dpo"}
    shared = {k: _without(r, *LOSS_KEYS) for k, r in runs.items()}
    assert len({json.dumps(s, sort_keys=True) for s in shared.values()}) == 1
    expected = {"metamath": "abacusai/MetaMath_DPO_FewShot", "arc": "abacusai/ARC_DPO_FewShot"}[data]
    assert [d["path"] for d in runs["dpo"]["datasets"]] == [expected]


# --------------------------------------------------------------------------------------------------------------
# the paper's Figures 2 and 3: every cell exactly once, each in the chain named after its figure

# (dataset, loss, beta, lambda): the runs each figure compares (lambda only where the loss has one).
PAPER_FIGURES = {
    "mistral-7b-fig2": {
        (d, loss, 0.3, 50 if loss == "dpop" else None)
        for d in ("metamath", "arc")
        for loss in ("dpo", "ipo", "slic", "dpop")
    },
    "mistral-7b-fig3": (
        {
            ("metamath", loss, beta, 50 if loss == "dpop" else None)
            for loss in ("dpo", "dpop")
            for beta in (0.1, 0.3, 1.0)
        }  # left: beta
        | {(d, "dpop", 0.3, lam) for d in ("metamath", "arc") for lam in (5, 50, 500)}
    ),  # right
}
DATASET_OF = {"abacusai/MetaMath_DPO_FewShot": "metamath", "abacusai/ARC_DPO_FewShot": "arc"}


def _mistral_cell(recipe):
    """(dataset, loss, beta, lambda) of a Mistral recipe, read from what it trains with."""
    loss = {None: recipe["rl"], ("ipo",): "ipo", ("hinge",): "slic_hinge"}[
        tuple(recipe["dpo_loss_type"]) if recipe.get("dpo_loss_type") else None
    ]
    (entry,) = recipe["datasets"]
    return DATASET_OF[entry["path"]], loss, recipe["rl_beta"], recipe.get("dpop_lambda")


def test_the_paper_figure_grid_is_complete_and_each_cell_is_in_its_chain():
    from smaug.training.chains import load_chains

    cells: dict[tuple, list[str]] = {}
    for path in GPU_RECIPES:
        if path.name.startswith("mistral7b_"):
            cells.setdefault(_mistral_cell(R.load_recipe(path)), []).append(path.name)
    chains = load_chains()
    in_some_chain = set()
    for chain, needed in PAPER_FIGURES.items():
        for cell in sorted(needed, key=str):
            assert len(cells.get(cell, [])) == 1, f"{chain} needs {cell}: recipes {cells.get(cell)}"
        stages = set(chains[chain]["stages"])
        assert stages == {cells[cell][0] for cell in needed}, f"{chain} runs exactly its figure's cells"
        in_some_chain |= stages
    hinge = set(chains["mistral-7b-slic-hinge"]["stages"])
    assert hinge == {"mistral7b_metamath_slic_hinge.yml", "mistral7b_arc_slic_hinge.yml"}
    every = {name for names in cells.values() for name in names}
    assert every == in_some_chain | hinge, "every Mistral recipe is in a chain"
    assert sum(map(len, cells.values())) == len(every) == 18


@pytest.mark.parametrize("name", sorted(n for n in G.generated_cells() if "_beta" in n or "_lambda" in n))
def test_sweep_points_change_exactly_one_setting(name):
    point = _load(name)
    centre_name = name.split("_beta")[0].split("_lambda")[0] + ".yml"
    centre = _load(centre_name)
    key = "rl_beta" if "_beta" in name else "dpop_lambda"
    assert point[key] != centre[key] and str(point[key]) in name
    assert _without(point, key, "output_dir") == _without(centre, key, "output_dir")


@pytest.mark.parametrize("path", GPU_RECIPES, ids=[rel(p) for p in GPU_RECIPES])
def test_gpu_recipe_header_hardware_template_and_revision(path):
    text = path.read_text()
    recipe = yaml.safe_load(text)
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert re.search(r"#\s+1\. ", header) and re.search(r"#\s+2\. ", header), "numbered steps at the top"
    # hardware needs are stated once, in recipes/chains.yaml; the header points at its chain's entry
    chain = re.search(r"`hardware:` of chain (\S+) in recipes/chains\.yaml", header)
    assert chain and rel(path).removeprefix("recipes/") in C.load_chains()[chain.group(1)]["stages"]
    assert not re.search(r"\d\s*(GB|TB|GiB|TiB) (of )?host RAM", header), "host RAM is stated in chains.yaml only"
    if is_raw_text(recipe):  # no template: every dataset passes its strings through unchanged (base models)
        assert "chat_template" not in recipe and "raw text" in header
    else:
        assert recipe["chat_template"] not in (None, "tokenizer_default"), "chat template chosen explicitly"
    if recipe.get("chat_template") == "jinja":
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
        by_base.setdefault(recipe["base_model"], set()).add(recipe.get("chat_template"))
    assert by_base["jondurbin/bagel-34b-v0.2"] == {"chatml"}
    assert by_base["moreh/MoMo-72B-lora-1.8.7-DPO"] == {"chatml"}  # Qwen
    assert by_base["meta-llama/Llama-2-7b-chat-hf"] == {"jinja"}  # recipes/templates/llama2_chat.jinja
    assert by_base["mistralai/Mistral-7B-v0.1"] == {None}  # a base model: raw text, no template


# How the settings are sourced: each setting the recipe has is marked "paper" or "our assumption" in its header.
SOURCED = [
    "rl_beta",
    "dpop_lambda",
    "slic_lambda",
    "learning_rate",
    "max_steps",
    "optimizer",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "lr_scheduler",
    "sequence_len",
    "dpo_loss_type",
]


@pytest.mark.parametrize("path", GPU_RECIPES, ids=[rel(p) for p in GPU_RECIPES])
def test_every_setting_says_paper_or_our_assumption(path):
    text = path.read_text()
    sourced = {}
    for keys, source in re.findall(r"^#   ([a-z_][a-z_, 0-9]*): (paper|our assumption|not in the paper)", text, re.M):
        for key in keys.split(", "):
            sourced[key] = source
    recipe = yaml.safe_load(text)
    wanted = [k for k in SOURCED if k in recipe] + ["template", "datasets"]
    assert not [k for k in wanted if k not in sourced], f"{rel(path)}: say 'paper' or 'our assumption' for each"
    if recipe.get("rl") == "dpop":  # the paper's DPOP settings are the paper's
        assert {sourced[k] for k in ("rl_beta", "dpop_lambda", "max_steps")} == {"paper"}


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
    "abacusai/MetaMath_DPO_FewShot": {
        "prompt": "Q: Tom has 3 apples and buys 4 more. How many?\nA:",
        "chosen": "3 + 4 = 7. The answer is 7.",
        "rejected": "3 + 4 = 8. The answer is 8.",
    },
    "abacusai/ARC_DPO_FewShot": {
        "prompt": "Question: Which gas do plants absorb?\nAnswer:",
        "chosen": "carbon dioxide",
        "rejected": "neon",
    },
    "abacusai/HellaSwag_DPO_FewShot": {
        "prompt": "A man is mowing the lawn. He",
        "chosen": "pushes the mower along the grass.",
        "rejected": "eats the mower.",
    },
    "Intel/orca_dpo_pairs": {
        "system": "You are an AI assistant. Think step by step.",
        "question": "Translate 'chat' from French.",
        "chosen": "It means cat.",
        "rejected": "It means dog.",
    },
    "jondurbin/truthy-dpo-v0.1": {
        "id": "t1",
        "source": "truthy",
        "system": "You are an unbiased assistant.",
        "prompt": "Do you have a body?",
        "chosen": "No, I am an AI without a body.",
        "rejected": "Yes, I have two hands.",
    },
    "HuggingFaceH4/ultrafeedback_binarized": {
        "prompt": "Write a haiku about rain.",
        "prompt_id": "p1",
        "chosen": [
            {"role": "user", "content": "Write a haiku about rain."},
            {"role": "assistant", "content": "Soft rain on the roof"},
        ],
        "rejected": [
            {"role": "user", "content": "Write a haiku about rain."},
            {"role": "assistant", "content": "Rain is wet."},
        ],
        "messages": [
            {"role": "user", "content": "Write a haiku about rain."},
            {"role": "assistant", "content": "Soft rain on the roof"},
        ],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    },
}
SFT_ROWS = {
    "meta-math/MetaMathQA": {
        "type": "GSM_Rephrased",
        "query": "What is 12 times 3?",
        "original_question": "12*3?",
        "response": "12 * 3 = 36. The answer is: 36",
    },
    "Open-Orca/SlimOrca": {
        "conversations": [
            {"from": "system", "value": "You are a helpful assistant.", "weight": None},
            {"from": "human", "value": "Name a primary colour.", "weight": 0.0},
            {"from": "gpt", "value": "Red is a primary colour.", "weight": 1.0},
        ]
    },
    "anon8231489123/ShareGPT_Vicuna_unfiltered": {
        "id": "s1",
        "conversations": [
            {"from": "human", "value": "Hello, who are you?"},
            {"from": "gpt", "value": "I am a language model."},
        ],
    },
}
CHAT_MARKER = {"chatml": "<|im_start|>user", "jinja": "[INST]"}
# Rows in the real schema of Hub datasets, one JSON Lines file per dataset: tests/fixtures/hub_rows/<org>__<name>.jsonl
HUB_ROWS = REPO_ROOT / "tests" / "fixtures" / "hub_rows"
# The recipes use the datasets the paper cites (recipes/DATASETS.md); the sets they used before stay documented
# alternatives: each recipe entry of a cited dataset is also tested with its alternative in its place, with the
# `type:` the alternative takes there (what the recipes' comments tell a user to write).
ALTERNATIVES = {
    # HuggingFaceH4's copy: the same schema without the `source` column, so the same types parse it.
    "allenai/ultrafeedback_binarized_cleaned": lambda entry: {**entry, "path": "HuggingFaceH4/ultrafeedback_binarized"},
    # SlimOrca: ShareGPT-style `conversations`, axolotl's own chat_template type.
    "shahules786/orca-chat": lambda entry: {
        "path": "Open-Orca/SlimOrca",
        "split": "train",
        "type": "chat_template",
        "chat_template": entry["chat_template"],
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
        "roles": {"system": ["system"], "user": ["human"], "assistant": ["gpt"]},
        "roles_to_train": ["assistant"],
    },
}


def _local_rows(path):
    return [json.loads(line) for line in (REPO_ROOT / path).read_text().splitlines()[:2]]


def _hub_fixture(path):
    return HUB_ROWS / f"{path.replace('/', '__')}.jsonl"


def _dataset_entries(kind):
    seen, out = set(), []
    for path in ALL:
        recipe = R.load_recipe(path)
        if R.is_preference(recipe) != (kind == "dpo"):
            continue
        for index, entry in enumerate(recipe["datasets"]):
            candidates = [(entry, None)]
            if entry["path"] in ALTERNATIVES:
                candidates.append((ALTERNATIVES[entry["path"]](entry), entry["path"]))
            for tested, replaces in candidates:
                key = (tested["path"], json.dumps(tested, sort_keys=True), recipe.get("chat_template"))
                if key in seen:
                    continue
                seen.add(key)
                label = f"{rel(path)}:{tested['path'].split('/')[-1]}" + (" (alternative)" if replaces else "")
                out.append(pytest.param(path, index, tested if replaces else None, id=label))
    return out


def _recipe_with(path, index, replacement):
    """(recipe, dataset entry, axolotl's validated config), with `replacement` in place of entry `index`."""
    recipe = R.load_recipe(path)
    if replacement is None:
        return recipe, recipe["datasets"][index], R.validate_offline(path)
    recipe["datasets"][index] = replacement
    return recipe, replacement, R.validate_offline(recipe)


@pytest.fixture(scope="module")
def tokenizer():
    from smaug.training.tiny_model import build_tokenizer

    return build_tokenizer()


def _rows_for(entry, table):
    if entry["path"].startswith("recipes/"):
        return _local_rows(entry["path"])
    if _hub_fixture(entry["path"]).is_file():
        return [json.loads(line) for line in _hub_fixture(entry["path"]).read_text().splitlines()]
    assert entry["path"] in table, f"no fixture row in the real schema of {entry['path']}: add one"
    return [table[entry["path"]]]


def test_cited_datasets_are_used_and_their_alternatives_tested():
    ids = [p.id for kind in ("dpo", "sft") for p in _dataset_entries(kind)]
    for cited, swap in ALTERNATIVES.items():
        alternative = swap({"path": cited, "chat_template": "chatml"})["path"]
        assert _hub_fixture(cited).is_file()
        assert any(i.endswith(":" + cited.split("/")[-1]) for i in ids), f"no recipe uses {cited}"
        assert any(alternative.split("/")[-1] + " (alternative)" in i for i in ids), f"{alternative} untested"
    used = {entry["path"] for path in GPU_RECIPES for entry in R.load_recipe(path)["datasets"]}
    assert not used & {"HuggingFaceH4/ultrafeedback_binarized", "Open-Orca/SlimOrca"}, "the cited sets are used"


def _apply_dpo_type(cfg, index, rows, tokenizer):
    """Rows through the dataset's own axolotl DPO `type:`, as axolotl's RL data loader applies it."""
    from axolotl.prompt_strategies.dpo import load as load_dpo
    from axolotl.utils.data.rl import _map_dataset
    from datasets import Dataset

    kind = cfg["datasets"][index]["type"]
    type_name = "user_defined.default" if isinstance(kind, dict) else kind
    loaded = load_dpo(type_name, cfg, dataset_idx=index)
    assert loaded is not None, f"axolotl has no DPO type {type_name!r}"
    transform, map_kwargs = loaded if isinstance(loaded, tuple) else (loaded, {})
    map_kwargs = {k: [c for c in v if c in rows[0]] if k == "remove_columns" else v for k, v in map_kwargs.items()}
    return _map_dataset(cfg, Dataset.from_list(rows), transform, tokenizer, **map_kwargs), type_name


@pytest.mark.parametrize("path,index,replacement", _dataset_entries("dpo"))
def test_dpo_dataset_type_parses_the_real_schema(path, index, replacement, tokenizer, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # recipe paths (jinja templates, data files) are relative to the repo root
    recipe, entry, cfg = _recipe_with(path, index, replacement)
    rows = _rows_for(entry, DPO_ROWS)
    out, type_name = _apply_dpo_type(cfg, index, rows, tokenizer)
    for row, parsed in zip(rows, out):
        prompt_text = row.get("question") or row["prompt"]
        chosen = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][-1]["content"]
        rejected = row["rejected"] if isinstance(row["rejected"], str) else row["rejected"][-1]["content"]
        if is_raw_text(recipe):  # the strings pass through unchanged
            assert (parsed["prompt"], parsed["chosen"], parsed["rejected"]) == (prompt_text, chosen, rejected)
            continue
        assert prompt_text.strip() in parsed["prompt"]
        assert chosen in parsed["chosen"] and rejected not in parsed["chosen"]
        assert rejected in parsed["rejected"] and chosen not in parsed["rejected"]
        assert CHAT_MARKER[recipe["chat_template"]] in parsed["prompt"]
        if row.get("system") and (type_name.startswith("chatml.") or type_name == "user_defined.default"):
            assert row["system"] in parsed["prompt"], "the system prompt is kept"


# A few-shot pair as the paper's MetaMath set has them: solved examples, then the question.
FEW_SHOT_ROW = {
    "prompt": "Question: Ann has 2 pens and buys 3 more. How many pens does she have?\nAnswer: 2 + 3 = 5. "
    "The answer is: 5\n\nQuestion: Tom has 3 apples and buys 4 more. How many apples does he have?\n"
    "Answer:",
    "chosen": " Tom has 3 + 4 = 7 apples. The answer is: 7",
    "rejected": " Tom has 3 + 4 = 9 apples. The answer is: 7",
}


def trl_tokenized_pairs(recipe_path, rows, tokenizer):
    """(prompt, prompt + chosen, prompt + rejected) as token text, the way TRL 1.9's DPOTrainer tokenizes the
    recipe's first dataset after axolotl's `type:` transform: the text the model trains on."""
    from types import SimpleNamespace

    from trl import DPOTrainer

    cfg = R.validate_offline(recipe_path)
    mapped, _ = _apply_dpo_type(cfg, 0, rows, tokenizer)
    # _prepare_dataset reads only the trainer's tokenizer and these three arguments of DPOConfig.
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    out = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), mapped, tokenizer, args, "train")
    return [
        (
            tokenizer.decode(r["prompt_ids"]),
            tokenizer.decode(r["prompt_ids"] + r["chosen_ids"]),
            tokenizer.decode(r["prompt_ids"] + r["rejected_ids"]),
        )
        for r in out
    ]


@pytest.mark.parametrize("name", ["mistral7b_metamath_dpop.yml", "mistral7b_arc_slic.yml"])
def test_base_model_recipes_train_on_raw_prompt_plus_completion(name, tokenizer, bos_tokenizer):
    path = RECIPES_DIR / name
    rows = [FEW_SHOT_ROW, DPO_ROWS[R.load_recipe(path)["datasets"][0]["path"]]]
    # The tiny tokenizer adds no BOS and ends with <|im_end|>; the Mistral-like one adds <s> and ends with </s>.
    for tok, bos in ((tokenizer, ""), (bos_tokenizer, "<s>")):
        for row, (prompt, chosen, rejected) in zip(rows, trl_tokenized_pairs(path, rows, tok)):
            assert prompt == bos + row["prompt"], "the loss covers the completion only"
            assert chosen == bos + row["prompt"] + row["chosen"] + tok.eos_token
            assert rejected == bos + row["prompt"] + row["rejected"] + tok.eos_token


@pytest.mark.parametrize("path,index,replacement", _dataset_entries("sft"))
def test_sft_dataset_type_parses_the_real_schema(path, index, replacement, tokenizer, monkeypatch):
    from axolotl.utils.data.wrappers import get_dataset_wrapper
    from axolotl.utils.dict import DictDefault
    from datasets import Dataset

    monkeypatch.chdir(REPO_ROOT)
    recipe, entry, cfg = _recipe_with(path, index, replacement)
    rows = _rows_for(entry, SFT_ROWS)
    ds_cfg = DictDefault(cfg["datasets"][index])
    base_type = None if isinstance(entry["type"], dict) else entry["type"].split(".")[0]
    wrapped, _ = get_dataset_wrapper(ds_cfg, tokenizer, cfg, base_type, Dataset.from_list(rows))
    for row, tokens in zip(rows, wrapped):
        untrained = [row.get("instruction") or ""]  # a system prompt, where the schema has one
        if "conversations" in row:
            question, answer = row["conversations"][-2]["value"], row["conversations"][-1]["value"]
        elif "conversation" in row:  # orca-chat: every turn's input is prompt, every turn's output is trained on
            question, answer = row["conversation"][-1]["input"], row["conversation"][-1]["output"]
            untrained += [turn["input"] for turn in row["conversation"]]
        elif "messages" in row:
            question, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        else:
            question, answer = row["query"], row["response"]
        text = tokenizer.decode(tokens["input_ids"])
        trained = tokenizer.decode([t for t, label in zip(tokens["input_ids"], tokens["labels"]) if label != -100])
        assert question in text and answer in text
        assert answer in trained and question not in trained, "loss on the answer only"
        for turn in row.get("conversation", []):
            assert turn["output"] in trained
        assert all(u in text and (not u or u not in trained) for u in untrained), "prompts kept, not trained on"
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
