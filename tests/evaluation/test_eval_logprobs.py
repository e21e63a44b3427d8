"""The log-prob diagnostic (paper Fig. 4/5): numbers checked against an independent forward pass."""

from __future__ import annotations

import json

import pytest
import torch

from smaug.cli import main
from smaug.common.errors import UserError
from smaug.data.io import load_pairs
from smaug.evaluation import logprobs as lp, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Byte-level tokenizer: one token per byte, so the first differing token is the first differing character.
PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "The answer is 4.", "rejected": "The answer is 5."},
    {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "Bluish green"},
    {"prompt": "Say hi", "chosen": "hi", "rejected": "no", "system": "Be brief."},
]
# index of the first differing completion token: "The answer is " is 14 bytes; "Blue" vs "Blui"; "h" vs "n"
EXPECTED_FIRST_DIFF = [14, 3, 0]


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    from smaug.training.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-seed1") / "model", seed=1)


def _direct_logps(model_dir, prompt: str, completion: str) -> list[float]:
    """Per-token log-probs of ``completion`` after ``prompt``: one unbatched forward, written independently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt_ids = tok(prompt)["input_ids"]
    full = tok(prompt + completion)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0]
    logp = torch.log_softmax(logits, dim=-1)
    return [logp[t - 1, full[t]].item() for t in range(len(prompt_ids), len(full))]


def _chatml(row):
    system = f"<|im_start|>system\n{row['system']}<|im_end|>\n" if row.get("system") else ""
    return system + f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n"


def test_chatml_format_matches_axolotl_prompt_pairs(tiny_model_dir):
    from axolotl.prompt_strategies.dpo.chatml import prompt_pairs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    transform = prompt_pairs(cfg=None)
    for row in PAIRS:
        expected = transform(dict(row))
        assert lp.format_pair(row, "chatml", tok) == (expected["prompt"], expected["chosen"], expected["rejected"])


def test_first_difference_and_encoding(tiny_model_dir):
    from transformers import AutoTokenizer

    assert lp.first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert lp.first_difference([1, 2], [1, 2, 5]) == 2
    assert lp.first_difference([1, 2], [1, 2]) is None
    encoded = lp.encode_pairs(AutoTokenizer.from_pretrained(tiny_model_dir), PAIRS, "chatml")
    assert [e["first_diff"] for e in encoded] == EXPECTED_FIRST_DIFF
    # completion = text + <|im_end|> (one special token), one token per byte
    assert len(encoded[1]["rejected_ids"]) == len("Bluish green") + 1


def test_analysis_matches_independent_forward_pass(tiny_model_dir, second_model_dir):
    result = lp.analyse_pairs(
        [str(second_model_dir)], str(tiny_model_dir), PAIRS, fmt="chatml", batch_size=2, dtype="float32", window=5
    )
    stats = result["models"][str(second_model_dir)]
    assert stats["per_pair"]["first_diff"] == EXPECTED_FIRST_DIFF

    deltas = {"chosen": [], "rejected": []}
    direct = {"model": {"chosen": [], "rejected": []}, "reference": {"chosen": [], "rejected": []}}
    for row in PAIRS:
        for side in ("chosen", "rejected"):
            completion = row[side] + "<|im_end|>"
            model = _direct_logps(second_model_dir, _chatml(row), completion)
            ref = _direct_logps(tiny_model_dir, _chatml(row), completion)
            deltas[side].append([m - r for m, r in zip(model, ref)])
            direct["model"][side].append(model)
            direct["reference"][side].append(ref)

    for side in ("chosen", "rejected"):
        totals = [sum(d) for d in deltas[side]]
        assert stats["per_pair"][f"{side}_total_delta"] == pytest.approx(totals, abs=1e-4)
        assert stats[f"{side}_total_delta_mean"] == pytest.approx(sum(totals) / 3, abs=1e-4)
        for name, keep in (("before", lambda t, k: t < k), ("at", lambda t, k: t == k), ("after", lambda t, k: t > k)):
            pooled = [x for d, k in zip(deltas[side], EXPECTED_FIRST_DIFF) for t, x in enumerate(d) if keep(t, k)]
            bucket = stats["buckets"][side][name]
            assert bucket["n_tokens"] == len(pooled)
            assert bucket["mean_delta_per_token"] == pytest.approx(sum(pooled) / len(pooled), abs=1e-5)
        at = stats["positional"][side]
        assert at["position"][0] == -5 and at["position"][-1] <= 5
        zero = at["position"].index(0)
        assert at["mean_delta"][zero] == pytest.approx(stats["buckets"][side]["at"]["mean_delta_per_token"], abs=1e-6)
    # Tokens before the first difference are the same tokens in the same context on both sides.
    assert stats["buckets"]["chosen"]["before"]["mean_delta_per_token"] == pytest.approx(
        stats["buckets"]["rejected"]["before"]["mean_delta_per_token"], abs=1e-6
    )
    # Figure 4 (right) as the paper defines it: each model's own mean log-prob by position, the reference's too;
    # model_profile gives the same numbers for one model on its own.
    alone = lp.model_profile(str(second_model_dir), PAIRS, window=5, batch_size=2, dtype="float32")
    for who, got in (("model", stats), ("reference", result["reference_stats"]), ("model", alone)):
        for side in ("chosen", "rejected"):
            curve = got["positional_logp"][side]
            for position, value in zip(curve["position"], curve["mean_logp"]):
                pooled = [
                    row[k + position]
                    for row, k in zip(direct[who][side], EXPECTED_FIRST_DIFF)
                    if 0 <= k + position < len(row)
                ]
                assert value == pytest.approx(sum(pooled) / len(pooled), abs=1e-5)
            assert got[f"{side}_logp_total_mean"] == pytest.approx(sum(map(sum, direct[who][side])) / 3, abs=1e-4)
    at, shifted = plots.shifted(alone["positional_logp"]["chosen"])
    assert shifted[at.index(-1)] == 0 and shifted[at.index(0)] != 0
    margins = [
        c - r for c, r in zip(stats["per_pair"]["chosen_total_delta"], stats["per_pair"]["rejected_total_delta"])
    ]
    assert stats["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)


def test_reference_against_itself_is_exactly_zero(tiny_model_dir):
    result = lp.analyse_pairs(
        [str(tiny_model_dir)], str(tiny_model_dir), PAIRS, fmt="plain", batch_size=4, dtype="float32"
    )
    stats = result["models"][str(tiny_model_dir)]
    assert stats["per_pair"]["chosen_total_delta"] == [0.0, 0.0, 0.0]
    assert stats["per_pair"]["rejected_total_delta"] == [0.0, 0.0, 0.0]
    assert stats["reward_accuracy"] == 0.0  # a zero margin is not a win
    assert stats["chosen_logp_total_mean"] == result["reference_stats"]["chosen_logp_total_mean"] < 0


def test_cli_writes_json_and_png(tiny_model_dir, second_model_dir, tmp_path):
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "logprobs",
            "--models",
            str(second_model_dir),
            "--reference",
            str(tiny_model_dir),
            "--pairs",
            str(pairs_file),
            "--out",
            str(out),
            "--dtype",
            "float32",
            "--limit",
            "2",
        ]
    )
    assert rc == 0
    data = json.loads((out / "logprobs.json").read_text())
    assert data["n_pairs"] == 2 and data["format"] == "chatml"
    assert data["models"][str(second_model_dir)]["per_pair"]["first_diff"] == EXPECTED_FIRST_DIFF[:2]
    assert (out / "logprobs.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*tmp"))


def test_bad_pairs_are_named_before_loading(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl: line 2: `rejected` is missing"):
        load_pairs(bad)
    rc = main(
        [
            "eval",
            "logprobs",
            "--models",
            str(tmp_path / "missing"),
            "--reference",
            str(tiny_model_dir),
            "--pairs",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "line 2" in capsys.readouterr().err
    with pytest.raises(UserError, match="does not exist"):
        lp.analyse_pairs([str(tmp_path / "missing")], str(tiny_model_dir), PAIRS)


def _trainer_state(path, penalty: bool):
    history = []
    for step in range(1, 6):
        entry = {
            "step": step,
            "loss": 0.7 - 0.05 * step,
            "logps/chosen": -50.0 - step,
            "logps/rejected": -50.0 - 3 * step,
            "rewards/margins": 0.1 * step,
        }
        if penalty:
            entry.update({"dpop/penalty": 0.01 * step, "dpop/active_fraction": 0.5})
        history.append(entry)
    history.append({"step": 5, "train_runtime": 12.0})
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 5, "log_history": history}))
    return path


def test_training_plot_from_trainer_state(tmp_path):
    dpo = _trainer_state(tmp_path / "dpo" / "checkpoint-5", penalty=False).parent
    dpop = _trainer_state(tmp_path / "dpop", penalty=True)
    series = plots.read_training_log(dpo)  # found in the latest checkpoint
    assert series["logps/chosen"] == ([1, 2, 3, 4, 5], [-51.0, -52.0, -53.0, -54.0, -55.0])
    assert "dpop/penalty" in plots.read_training_log(dpop)
    out = tmp_path / "fig.png"
    assert main(["eval", "plot-training", f"DPO={dpo}", f"DPOP={dpop}", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no trainer_state.json"):
        plots.plot_training({"x": tmp_path / "empty"}, tmp_path / "x.png")
    no_logps = tmp_path / "sft"
    no_logps.mkdir()
    (no_logps / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 1.0}]}))
    with pytest.raises(UserError, match="no logps/chosen"):
        plots.read_training_log(no_logps)
