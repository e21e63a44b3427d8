"""`smaug showcase reproduce --quick`: the paper's failure mode (DPO lowers the preferred completion's log-prob on low
edit-distance pairs) and DPOP's fix, through the real `axolotl train` CLI and our plugin, on CPU."""

import json

import pytest

from smaug.cli import main
from smaug.data.synthetic import two_step_metamath_row
from smaug.showcase.reproduce import (
    ANSWER_RE,
    parse_answer,
    prepare_data,
    run_is_done,
)

# Margins: measured by hand over seeds 0, 1, 2 of the quick setting (SFT 200 steps, 30 DPO/DPOP steps; see
# recipes/reproduce/README.md): DPO's Δ log p(chosen) was -6.2, -5.0, -10.0 nats (Δ rejected -7.2, -5.8, -10.6,
# reward accuracy 0.65-0.71, Δ/token after k -0.06 .. -0.11); DPOP λ=50's +0.18, +0.24, +0.10. The thresholds
# leave slack both ways.
DPO_CHOSEN_MAX = -2.0
DPOP_CHOSEN_MIN = -0.5


def test_problems_become_metamath_pairs_with_one_corrupted_intermediate_result(tmp_path):
    info = prepare_data(tmp_path, n_problems=200, n_heldout=20)
    # a problem whose intermediate result equals the answer ($20 - $10 = $10) has nothing to corrupt
    assert set(info["skips"]["train"]) <= {"no_intermediate_calculation"}
    assert info["train_pairs"] >= 0.95 * (info["problems"] - 20)
    assert info["heldout_pairs"] + info["skips"]["heldout"].get("no_intermediate_calculation", 0) == 20
    pairs = [json.loads(line) for line in (tmp_path / "data" / "pairs_train.jsonl").read_text().splitlines()]
    heldout = {
        json.loads(line)["prompt"] for line in (tmp_path / "data" / "pairs_heldout.jsonl").read_text().splitlines()
    }
    assert not heldout & {p["prompt"] for p in pairs}
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"]
        # final answer untouched, exactly one number changed
        assert parse_answer(pair["chosen"]) == parse_answer(pair["rejected"]) is not None
        assert len(pair["chosen"].split()) == len(pair["rejected"].split())
        assert sum(a != b for a, b in zip(pair["chosen"].split(), pair["rejected"].split())) == 1
    row = two_step_metamath_row(3)
    assert ANSWER_RE.search(row["response"]).group(1) == row["answer"]


def test_bad_seeds_are_refused_before_anything_runs(tmp_path, capsys):
    assert main(["showcase", "reproduce", "--seeds", "1", "1", "--out", str(tmp_path / "r")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_quick_reproduce_dpo_lowers_chosen_dpop_does_not(tmp_path, capsys):
    out = tmp_path / "reproduce"
    assert main(["showcase", "reproduce", "--quick", "--seeds", "0", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    dpo, dpop = rows["DPO"], rows["DPOP λ=50"]
    # The failure mode: DPO still separates the pair, but by pushing the preferred completion down too...
    assert dpo["d_chosen"] < DPO_CHOSEN_MAX, dpo
    assert dpo["d_rejected"] < dpo["d_chosen"] and dpo["reward_accuracy"] > 0.5
    # ...most of all on the tokens after the first difference, which are identical in both completions.
    assert dpo["d_chosen_after"] < 0
    # The fix: DPOP keeps the preferred completion at (or above) the reference.
    assert dpop["d_chosen"] > DPOP_CHOSEN_MIN, dpop
    assert dpop["d_chosen"] > dpo["d_chosen"] + 1.0
    for name in ("results.md", "positional.png", "training.png"):
        assert (out / name).stat().st_size > 0
    assert "| DPO | 0 |" in capsys.readouterr().out
    provenance = json.loads((out / "runs" / "dpop-l50-s0" / "smaug_provenance.json").read_text())
    assert provenance["training"]["rl"] == "dpop" and provenance["training"]["dpop_lambda"] == 50.0
    assert provenance["training"]["seed"] == 0 and provenance["base_model"] == str(out.resolve() / "runs" / "sft")

    # A second call reuses every finished run (no axolotl process) and gives the same table.
    stamp = (out / "runs" / "dpo-s0" / "model.safetensors").stat().st_mtime_ns
    assert main(["showcase", "reproduce", "--quick", "--seeds", "0", "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (out / "runs" / "dpo-s0" / "model.safetensors").stat().st_mtime_ns == stamp
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]
    assert all(run_is_done(out / "runs" / name) for name in ("sft", "dpo-s0", "dpop-l50-s0"))
