"""`smaug eval sweep`: every checkpoint of a chain scored (real lm-eval, tiny model), cached by checkpoint and
resumed after a kill; the paper's Figures 2-6 drawn from the points; the `mini` chain of `make figures-mini`."""

from __future__ import annotations

import csv
import json
import shutil
from statistics import fmean, stdev

import pytest

from smaug.cli import main
from smaug.common.errors import UserError
from smaug.common.files import read_jsonl
from smaug.evaluation import figures, harness, logprobs
from smaug.evaluation.sweep import stage_labels, stage_points, sweep
from smaug.showcase.figures_mini import HELD_OUT
from smaug.showcase.reproduce import prepare_data
from smaug.training.chains import plan_chain

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIRS = [
    {"prompt": "What is 2+3?", "chosen": "2 + 3 = 5.\nThe answer is: 5", "rejected": "2 + 3 = 6.\nThe answer is: 5"},
    {"prompt": "What is 4*2?", "chosen": "4 * 2 = 8.\nThe answer is: 8", "rejected": "4 * 2 = 9.\nThe answer is: 8"},
    {"prompt": "Say 7", "chosen": "7", "rejected": "8"},
]


def test_mini_chain_runs_differ_only_in_loss_and_seed_and_never_train_on_the_task(tmp_path, monkeypatch):
    sft, *runs = plan_chain("mini").stages
    labels = [stage_labels(stage.recipe) for stage in runs]
    assert sorted((x["loss"], x["seed"]) for x in labels) == [
        *[("DPO", s) for s in range(3)],
        *[("DPOP", s) for s in range(3)],
        ("IPO", 0),
        ("SLiC", 0),
    ]
    assert {(x["dataset"], x["beta"]) for x in labels} == {("MetaMath", 0.3)}
    assert {x["lambda"] for x in labels} == {None, 50} and stage_labels(sft.recipe)["loss"] == "SFT"
    keep = {"rl", "dpop_lambda", "dpo_loss_type", "seed", "output_dir"}
    settings = [{k: v for k, v in stage.recipe.items() if k not in keep} for stage in runs]
    assert all(s == settings[0] for s in settings) and {s.base_path for s in runs} == {sft.output_dir}
    info = prepare_data(tmp_path)
    assert info["heldout_problems"] == read_jsonl(HELD_OUT)
    trained = {row["prompt"] for row in read_jsonl(tmp_path / "pairs_train.jsonl")}
    assert len(trained) > 2000 and not trained & {row["query"] for row in read_jsonl(HELD_OUT)}
    # a task file that is not the held-out set is refused before the base model or any stage runs
    from smaug.showcase import demo_model, figures_mini, reproduce

    other = tmp_path / "test.jsonl"
    other.write_text("".join(json.dumps(row) + "\n" for row in read_jsonl(HELD_OUT)[1:]))
    monkeypatch.setattr(figures_mini, "HELD_OUT", other)
    monkeypatch.setattr(reproduce, "prepare_data", lambda folder: info)  # as written above, not in ./outputs
    monkeypatch.setattr(demo_model, "convert", lambda *a, **k: pytest.fail("the base model was converted"))
    with pytest.raises(UserError, match="is not the set of problems held out of training"):
        figures_mini.figures_mini(tmp_path / "root")
    # the paper's grids get the paper's panel names
    grid = [stage_labels(s.recipe) for s in plan_chain("mistral-7b-fig3").stages]
    assert {(x["dataset"], x["loss"], x["beta"], x["lambda"]) for x in grid} >= {
        ("MetaMath", "DPO", 0.1, None),
        ("MetaMath", "DPOP", 0.3, 500),
        ("ARC", "DPOP", 0.3, 5),
    }
    hinge = {stage_labels(s.recipe)["loss"] for s in plan_chain("mistral-7b-slic-hinge").stages}
    assert hinge == {"SLiC (TRL hinge)"}


def _copy(src, dest, step: int | None = None, max_steps: int = 24):
    shutil.copytree(src, dest)
    if step is not None:
        state = {"global_step": step, "max_steps": max_steps, "log_history": []}
        (dest / "trainer_state.json").write_text(json.dumps(state))
    return dest


@pytest.fixture
def mini_root(tmp_path, tiny_model_dir):
    """The chain `mini` under an output root, as a run leaves it: SFT done; DPO seed 0 done with checkpoints at
    8 and 24; DPOP seed 0 stopped after checkpoint 8 (checkpoint 16 half-written); IPO done with a checkpoint at
    8 only; the other stages not started."""
    root = tmp_path / "root"
    stages = {stage.name.removeprefix("recipes/mini/"): stage for stage in plan_chain("mini", root).stages}
    _copy(tiny_model_dir, stages["sft.yml"].base_path)
    _copy(tiny_model_dir, stages["sft.yml"].output_dir)
    for name, steps in (("dpo_seed0.yml", (8, 24)), ("dpop_seed0.yml", (8,)), ("ipo.yml", (8,))):
        for step in steps:
            _copy(tiny_model_dir, stages[name].output_dir / f"checkpoint-{step}", step)
    _copy(tiny_model_dir, stages["dpop_seed0.yml"].output_dir / "checkpoint-16")  # no trainer_state.json
    shutil.copytree(tiny_model_dir, stages["ipo.yml"].output_dir, dirs_exist_ok=True)  # its final model
    for name in ("sft.yml", "dpo_seed0.yml", "ipo.yml"):
        stages[name].marker.write_text("{}")
    return root, stages


def test_points_are_the_base_each_complete_checkpoint_and_the_final_model(mini_root):
    root, stages = mini_root
    sft = stages["sft.yml"]
    final = sft.recipe["max_steps"]  # no checkpoint: the recipe says where training ends
    assert stage_points(sft) == {0: str(sft.base_path), final: str(sft.output_dir)}
    dpo = stages["dpo_seed0.yml"]
    assert stage_points(dpo) == {
        0: str(sft.output_dir),
        8: str(dpo.output_dir / "checkpoint-8"),
        24: str(dpo.output_dir / "checkpoint-24"),
    }
    assert stage_points(stages["dpop_seed0.yml"]) == {
        0: str(sft.output_dir),
        8: str(stages["dpop_seed0.yml"].output_dir / "checkpoint-8"),
    }
    ipo = stages["ipo.yml"]  # done, no checkpoint at its last step: the final model is the stage folder
    assert stage_points(ipo) == {
        0: str(sft.output_dir),
        8: str(ipo.output_dir / "checkpoint-8"),
        24: str(ipo.output_dir),
    }
    assert stage_points(stages["slic.yml"]) == {0: str(sft.output_dir)}


def test_sweep_caches_each_checkpoint_and_resumes_after_a_kill(mini_root, tmp_path, monkeypatch, capsys):
    root, stages = mini_root
    for name in ("dpop_seed0.yml", "ipo.yml"):  # fewer points: the stage_points test covers them
        shutil.rmtree(stages[name].output_dir)
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    results = tmp_path / "results"
    calls = {"evaluate": [], "profile": []}
    real_evaluate, real_profile = harness.evaluate, logprobs.model_profile

    def evaluate(model, *args, **kwargs):
        calls["evaluate"].append(model)
        if kill_at == len(calls["evaluate"]):
            raise KeyboardInterrupt  # killed while scoring this checkpoint
        return real_evaluate(model, *args, **kwargs)

    def profile(model, *args, **kwargs):
        calls["profile"].append(model)
        return real_profile(model, *args, **kwargs)

    monkeypatch.setattr(harness, "evaluate", evaluate)
    monkeypatch.setattr(logprobs, "model_profile", profile)
    options = dict(output_root=root, results_root=results, limit=2, dtype="float32", batch_size=4)
    kill_at = 3
    with pytest.raises(KeyboardInterrupt):
        sweep("mini", {"": "mini_math"}, {"": pairs_file}, **options)
    sft, dpo = stages["sft.yml"], stages["dpo_seed0.yml"]
    assert calls["evaluate"] == [str(sft.base_path), str(sft.output_dir), str(dpo.output_dir / "checkpoint-8")]
    assert calls["profile"] == [str(sft.base_path), str(sft.output_dir)]

    calls["evaluate"].clear()
    calls["profile"].clear()
    kill_at = 0
    result = sweep("mini", {"": "mini_math"}, {"": pairs_file}, **options)
    resumed = [str(dpo.output_dir / "checkpoint-8"), str(dpo.output_dir / "checkpoint-24")]
    assert calls["evaluate"] == resumed and calls["profile"] == resumed
    by_stage = {}
    for point in result["points"]:
        by_stage.setdefault(point["stage"], []).append(point["step"])
        assert 0 <= point["score"] <= 1 and point["chosen_logp_total_mean"] < 0 and point["n_pairs"] == 3
    assert by_stage["recipes/mini/sft.yml"] == [0, sft.recipe["max_steps"]] and by_stage[
        "recipes/mini/dpo_seed0.yml"
    ] == [0, 8, 24]
    assert by_stage["recipes/mini/slic.yml"] == [0] and len(by_stage) == 9
    base = result["points"][0]
    reference = logprobs.analyse_pairs([str(sft.output_dir)], str(sft.base_path), PAIRS, dtype="float32")
    assert base["chosen_logp_total_mean"] == pytest.approx(reference["reference_stats"]["chosen_logp_total_mean"])

    # A summary that is not whole (its harness.json from another run) is scored again, and so is a checkpoint of a
    # retrained stage (same folder, another trainer_state.json); the rest is reused.
    from smaug.common.paths import eval_dir

    harness_json = eval_dir(resumed[1], "mini_math", results) / "harness.json"
    harness_json.write_text(harness_json.read_text() + " ")
    state = dpo.output_dir / "checkpoint-8" / "trainer_state.json"
    state.write_text(json.dumps(json.loads(state.read_text()) | {"log_history": [{"step": 8, "loss": 0.1}]}))
    calls["evaluate"].clear()
    calls["profile"].clear()
    argv = ["eval", "sweep", "mini", "--suite", "mini_math", "--pairs", str(pairs_file), "--output-root", str(root)]
    argv += ["--results-dir", str(results), "--limit", "2", "--dtype", "float32", "--batch-size", "4"]
    assert main(argv) == 0
    assert calls == {"evaluate": resumed, "profile": resumed}
    out = results / "figures" / "mini"
    same = ("stage", "step", "model", "score", figures.CHOSEN)  # the retrained checkpoint has the same weights
    again = json.loads((out / "sweep.json").read_text())["points"]
    assert [[p[k] for k in same] for p in again] == [[p[k] for k in same] for p in result["points"]]
    for name in ("figure2", "figure4_left", "figure4_right", "figure5_6"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC and (out / f"{name}.csv").stat().st_size
    assert not (out / "figure3.png").exists()  # no β or λ sweep in this chain
    assert "| MetaMath | DPO | 3 | 24 |" in (out / "table.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_bad_sweep_arguments_fail_in_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "evaluate", lambda *a, **k: pytest.fail("a model was evaluated"))
    for argv, message in (
        (["--suite", "ARC=mini_math"], "--suite ARC=...: chain 'mini' trains on MetaMath"),
        (["--suite", "MetaMath=no_such_suite"], "unknown suite 'no_such_suite'"),
        (["--suite", "mini_math", "--pairs", str(tmp_path / "missing.jsonl")], "missing.jsonl does not exist"),
    ):
        code = main(["eval", "sweep", "mini", "--output-root", str(tmp_path / "root"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
    with pytest.raises(SystemExit):  # argparse's own usage error
        main(["eval", "sweep", "mini", "--suite", "=x"])
    assert "write DATASET=VALUE" in capsys.readouterr().err


def _point(dataset, loss, step, seed=0, beta=0.3, lam=None, score=0.5, chosen=-20.0):
    stage = f"{dataset}-{loss}-{beta}-{lam}-{seed}"
    point = dict(stage=stage, dataset=dataset, loss=loss, beta=beta, seed=seed, step=step, score=score)
    point |= {"lambda": lam, figures.CHOSEN: chosen, figures.REJECTED: chosen - step / 10}
    shape = [-0.5, -0.25, -1.0 - step / 100, -2.0, -1.5]  # per-token log-prob at positions -2 .. 2
    return point | {"positional_logp": {"chosen": {"position": [-2, -1, 0, 1, 2], "mean_logp": shape}}}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_all_five_figures_from_the_points_of_a_grid(tmp_path):
    """The paper's grid (Figures 2 and 3) as a sweep leaves it: DPO and DPOP with three seeds, β and λ sweeps."""
    points = [_point("MetaMath", "SFT", s, beta=None) for s in (0, 200)]
    runs = [("MetaMath", loss, seed, 0.3, lam) for loss, lam in (("DPO", None), ("DPOP", 50)) for seed in range(3)]
    runs += [("MetaMath", "IPO", 0, 0.3, None), ("MetaMath", "SLiC", 0, 0.3, None)]
    runs += [("MetaMath", loss, 0, beta, lam) for beta in (0.1, 1.0) for loss, lam in (("DPO", None), ("DPOP", 50))]
    runs += [("MetaMath", "DPOP", 0, 0.3, lam) for lam in (5, 500)]
    runs += [("ARC", "DPO", 0, 0.3, None)] + [("ARC", "DPOP", 0, 0.3, lam) for lam in (5, 50, 500)]
    for dataset, loss, seed, beta, lam in runs:
        for step in (0, 100, 200):
            score = 0.5 + step / 1000 * (2 if loss == "DPOP" else 1) + seed / 100 + (lam or 0) / 10000
            points.append(_point(dataset, loss, step, seed, beta, lam, score, chosen=-20 - step / 100 * len(loss)))
    written = figures.draw_figures({"points": points, "suites": {"": "gsm8k"}}, tmp_path)
    names = {p.name for p in written}
    for name in ("figure2", "figure3", "figure4_left", "figure4_right", "figure5_6"):
        assert {f"{name}.png", f"{name}.csv"} <= names and (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC

    fig2 = _read_csv(tmp_path / "figure2.csv")
    assert {(r["panel"], r["line"]) for r in fig2} == {
        *[("MetaMath", loss) for loss in ("DPO", "DPOP", "IPO", "SLiC")],
        ("ARC", "DPO"),
        ("ARC", "DPOP"),
    }  # the paper's β and λ only; SFT is no loss of the comparison
    dpo = next(r for r in fig2 if (r["panel"], r["line"], r["training step"]) == ("MetaMath", "DPO", "200"))
    seeds = [0.5 + 0.2 + s / 100 for s in range(3)]
    assert float(dpo["mean"]) == pytest.approx(fmean(seeds)) and float(dpo["std"]) == pytest.approx(stdev(seeds))
    assert dpo["runs"] == "3"

    fig3 = {}
    for r in _read_csv(tmp_path / "figure3.csv"):
        fig3.setdefault(r["panel"], set()).add(r["line"])
    assert fig3 == {
        "β, MetaMath": {f"{loss} β={b}" for loss in ("DPO", "DPOP") for b in ("0.1", "0.3", "1")},
        "λ, MetaMath": {"DPOP λ=5", "DPOP λ=50", "DPOP λ=500"},
        "λ, ARC": {"DPOP λ=5", "DPOP λ=50", "DPOP λ=500"},
    }

    right = _read_csv(tmp_path / "figure4_right.csv")
    assert {r["line"] for r in right if r["panel"] == "MetaMath"} == {"reference", "DPO", "DPOP", "IPO", "SLiC"}
    at = {(r["panel"], r["line"], int(r["token position relative to the first differing token"])): r for r in right}
    assert all(float(r["mean"]) == 0 for (_, _, x), r in at.items() if x == -1)  # shifted to 0 at -1
    assert float(at["MetaMath", "DPO", 0]["mean"]) == pytest.approx(-1.0 - 2.0 + 0.25)  # step 200, minus -0.25
    assert float(at["MetaMath", "reference", 0]["mean"]) == pytest.approx(-0.75)

    sides = _read_csv(tmp_path / "figure5_6.csv")
    rejected = next(r for r in sides if (r["panel"], r["line"], r["training step"]) == ("ARC", "DPOP rejected", "100"))
    assert float(rejected["mean"]) == pytest.approx(-20 - 4 - 10)
    assert {r["line"] for r in _read_csv(tmp_path / "figure4_left.csv")} == {"DPO", "DPOP", "IPO", "SLiC"}

    table = (tmp_path / "table.md").read_text()
    assert f"| MetaMath | DPO | 3 | 200 | 51.0 ± 1.0 | {100 * fmean(seeds):.1f} ± 1.0 |" in table
    assert "| MetaMath | DPOP β=0.1 | 1 | 200 |" in table and "| ARC | DPOP λ=500 | 1 |" in table
    assert "| MetaMath | SFT | 1 | 200 | 50.0 | 50.0 |" in table
