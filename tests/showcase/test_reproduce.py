"""`smaug showcase reproduce`: the paper's failure mode (DPO lowers the preferred completion's log-prob on low
edit-distance pairs) and DPOP's fix, through the stage chain, the real `axolotl train` CLI and our plugin, on CPU."""

import json

import pytest

from smaug.cli import main
from smaug.data.synthetic import two_step_metamath_row
from smaug.showcase.reproduce import ANSWER_RE, parse_answer, prepare_data
from smaug.training.chains import plan_chain

# Margins: the chain `reproduce-quick` (SFT 400 steps, 60 DPO/DPOP steps, seed 0) measured DPO's Δ log p(chosen)
# at -6.9 nats (Δ rejected -12.0, reward accuracy 0.89, Δ/token after k -0.07) and DPOP λ=50's at +0.05; the
# earlier runner measured -7.9 and +0.25 for the same settings. The thresholds leave slack both ways.
DPO_CHOSEN_MAX = -2.0
DPOP_CHOSEN_MIN = -0.5


def test_problems_become_metamath_pairs_with_one_corrupted_intermediate_result(tmp_path):
    info = prepare_data(tmp_path, n_problems=200, n_heldout=20)
    # a problem whose intermediate result equals the answer ($20 - $10 = $10) has nothing to corrupt
    assert set(info["skips"]["train"]) <= {"no_intermediate_calculation"}
    assert info["train_pairs"] >= 0.95 * (info["problems"] - 20)
    assert info["heldout_pairs"] + info["skips"]["heldout"].get("no_intermediate_calculation", 0) == 20
    pairs = [json.loads(line) for line in (tmp_path / "pairs_train.jsonl").read_text().splitlines()]
    heldout = {json.loads(line)["prompt"] for line in (tmp_path / "pairs_heldout.jsonl").read_text().splitlines()}
    assert not heldout & {p["prompt"] for p in pairs}
    assert {p["query"] for p in info["heldout_problems"]} >= heldout
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"]
        # final answer untouched, exactly one number changed
        assert parse_answer(pair["chosen"]) == parse_answer(pair["rejected"]) is not None
        assert len(pair["chosen"].split()) == len(pair["rejected"].split())
        assert sum(a != b for a, b in zip(pair["chosen"].split(), pair["rejected"].split())) == 1
    row = two_step_metamath_row(3)
    assert ANSWER_RE.search(row["response"]).group(1) == row["answer"]


def test_reproduce_is_a_chain_whose_runs_differ_only_in_the_loss(tmp_path, capsys):
    full, quick = plan_chain("reproduce"), plan_chain("reproduce-quick")
    assert [s.name for s in quick.stages] == [s.name for s in full.stages][:3]
    sft, *runs = full.stages
    assert {s.base_path for s in runs} == {sft.output_dir} and full.hardware["accelerator"] == "cpu"
    keep = {"rl", "dpop_lambda", "output_dir"}
    settings = [{k: v for k, v in s.recipe.items() if k not in keep} for s in runs]
    assert all(x == settings[0] for x in settings)
    assert [(s.recipe["rl"], s.recipe.get("dpop_lambda")) for s in runs] == [
        ("dpo", None),
        ("dpop", 50),
        ("dpop", 5),
        ("dpop", 500),
    ]
    # A bad output root is refused before anything is written.
    (tmp_path / "root").write_text("x")
    assert main(["showcase", "reproduce", "--output-root", str(tmp_path / "root")]) == 2
    assert "is a file, where the chain needs the folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["root"]


@pytest.mark.slow
def test_quick_reproduce_dpo_lowers_chosen_dpop_does_not(tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["showcase", "reproduce", "--quick", "--output-root", str(root)]) == 0
    out = root / "reproduce"
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
    provenance = json.loads((out / "dpop" / "smaug_provenance.json").read_text())
    assert provenance["training"]["rl"] == "dpop" and provenance["training"]["dpop_lambda"] == 50.0
    assert provenance["training"]["seed"] == 0 and provenance["base_model"] == str(out / "sft")

    # A second call finds every stage done (no axolotl process) and gives the same table.
    stamp = (out / "dpo" / "model.safetensors").stat().st_mtime_ns
    assert main(["showcase", "reproduce", "--quick", "--output-root", str(root)]) == 0
    assert capsys.readouterr().out.count("done, skipped") == 3
    assert (out / "dpo" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    assert all(stage.marker.is_file() for stage in plan_chain("reproduce-quick", root).stages)
