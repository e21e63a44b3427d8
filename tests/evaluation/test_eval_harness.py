"""`smaug eval`: lm-eval suites, summaries, comparison tables and input errors (offline, tiny model)."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import shutil
from pathlib import Path

import pytest

from smaug.common.errors import UserError
from smaug.common.paths import REPO_ROOT, eval_dir
from smaug.evaluation.cli import find_summary, register
from smaug.evaluation.harness import (
    ResolvedModel,
    backend_arguments,
    check_suite_tasks,
    evaluate,
    resolve_model,
    task_manager_for,
)
from smaug.evaluation.suites import TASKS_DIR, get_suite, load_suites
from smaug.evaluation.summary import (
    Summary,
    build_summary,
    compare_table,
    leaf_tasks,
    load_summary,
    read_samples,
    render_summary_md,
    unweighted_subtask_mean,
)

LEADERBOARD_KEYS = ["arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smaug")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


# --- the offline suite, end to end on the tiny model -------------------------------------------------------

OFFLINE_LIMIT = 8  # MMLU subjects then hold 6 and 8 documents: weighted and unweighted means can differ


@pytest.fixture(scope="module")
def offline_run(tiny_model_dir, tmp_path_factory):
    """One real lm-eval run of offline_mini, started from a cwd that is not the repository root."""
    root = tmp_path_factory.mktemp("results")
    elsewhere = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        out_dir = evaluate(
            str(tiny_model_dir),
            "offline_mini",
            dtype="bfloat16",
            batch_size=4,
            device="cpu",
            limit=OFFLINE_LIMIT,
            results_root=root,
        )
    return out_dir, root


def test_offline_suite_writes_results_where_eval_dir_says(offline_run, tiny_model_dir):
    out_dir, root = offline_run
    assert out_dir == eval_dir(str(tiny_model_dir), "offline_mini", root)
    logs = {log.file for log in load_summary(out_dir / "summary.json").samples.values()}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["harness.json", "summary.json", "summary.md", *logs])


def test_offline_run_keeps_lm_evals_per_sample_logs(offline_run):
    """Issue 24.3: lm-eval's own samples_<task>_<time>.jsonl beside summary.json, which names and hashes them;
    the reported scores are the means of the logged per-sample metrics."""
    out_dir, _ = offline_run
    summary = load_summary(out_dir / "summary.json")
    leaves = ["mini_arc_challenge", "mini_hellaswag", "mini_mmlu_elementary_mathematics"]
    leaves += ["mini_mmlu_high_school_geography", "mini_truthfulqa_mc2", "mini_winogrande", "mini_gsm8k"]
    assert sorted(summary.samples) == sorted(leaves)
    for task, log in summary.samples.items():
        assert (
            log.file.startswith(f"samples_{task}_")
            and log.sha256 == hashlib.sha256((out_dir / log.file).read_bytes()).hexdigest()
        )
    for key, task in (("arc", "mini_arc_challenge"), ("gsm8k", "mini_gsm8k"), ("winogrande", "mini_winogrande")):
        entry = summary.tasks[key]
        rows = [
            r for r in read_samples(out_dir / "summary.json", summary, task) if r["filter"] == (entry.filter or "none")
        ]
        assert len(rows) == OFFLINE_LIMIT and math.isclose(sum(r[entry.metric] for r in rows) / len(rows), entry.value)
    math_rows = read_samples(out_dir / "summary.json", summary, "mini_mmlu_elementary_mathematics")
    assert sorted(r["doc_id"] for r in math_rows) == list(range(6))  # all six documents of the smaller subject


def test_offline_summary_values_and_run_record(offline_run, tiny_model_dir):
    from importlib.metadata import version

    import lm_eval  # noqa: F401  (installed version is what must be recorded)

    out_dir, _ = offline_run
    summary = json.loads((out_dir / "summary.json").read_text())
    suite = get_suite("offline_mini")
    assert list(summary["tasks"]) == LEADERBOARD_KEYS
    for key, entry in summary["tasks"].items():
        spec = suite.task(key)
        assert 0.0 <= entry["value"] <= 1.0, key
        assert entry["task"] == spec.task and entry["metric"] == spec.metric and entry["filter"] == spec.filter
        assert entry["num_fewshot"] == spec.num_fewshot
        assert set(entry["dataset"]) == {"name", "type", "config", "split"}
    assert math.isclose(summary["average"], sum(e["value"] for e in summary["tasks"].values()) / 6)
    assert summary["model"] == str(tiny_model_dir.resolve())
    assert summary["model_revision"].startswith("local-sha256:")
    run = (summary["suite"], summary["dtype"], summary["batch_size"], summary["limit"])
    assert run == ("offline_mini", "bfloat16", 4, 8)
    assert summary["versions"]["lm_eval"] == version("lm_eval")
    assert summary["versions"]["transformers"] == version("transformers")
    assert summary["versions"]["torch"] == version("torch")


def test_offline_summary_matches_raw_harness_output(offline_run):
    out_dir, _ = offline_run
    summary = json.loads((out_dir / "summary.json").read_text())
    raw = json.loads((out_dir / "harness.json").read_text())
    # Each task really ran with the suite's own few-shot count (lm-eval only has one global num_fewshot).
    assert raw["n-shot"]["mini_arc_challenge"] == 3 and raw["n-shot"]["mini_winogrande"] == 3
    assert raw["n-shot"]["mini_truthfulqa_mc2"] == 0 and raw["n-shot"]["mini_mmlu_high_school_geography"] == 2
    assert summary["tasks"]["gsm8k"]["value"] == raw["results"]["mini_gsm8k"]["exact_match,strict-match"]
    assert summary["tasks"]["arc"]["value"] == raw["results"]["mini_arc_challenge"]["acc_norm,none"]
    # MMLU: plain mean over the subjects, next to lm-eval's size-weighted group number.
    subjects = {
        name: raw["results"][name]["acc,none"]
        for name in ("mini_mmlu_elementary_mathematics", "mini_mmlu_high_school_geography")
    }
    mmlu = summary["tasks"]["mmlu"]
    assert mmlu["subtasks"] == subjects
    assert math.isclose(mmlu["value"], sum(subjects.values()) / 2)
    assert mmlu["harness_group_value"] == raw["results"]["mini_mmlu"]["acc,none"]
    assert raw["n-samples"]["mini_mmlu_elementary_mathematics"]["effective"] == 6
    # The Markdown table shows the same numbers x100.
    md = (out_dir / "summary.md").read_text()
    assert f"| **{100 * summary['average']:.2f}** |" in md
    assert f"| {100 * summary['tasks']['winogrande']['value']:.2f} |" in md


# --- task definitions ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_task_manager():
    return task_manager_for(get_suite("leaderboard_v1"))  # harness tasks + ours: indexes a few thousand YAMLs


def test_leaderboard_v1_tasks_pass_lm_eval_validation(full_task_manager):
    suite = get_suite("leaderboard_v1")
    assert [s.key for s in suite.tasks.values()] == LEADERBOARD_KEYS
    checked = check_suite_tasks(suite, full_task_manager)
    assert len(checked["mmlu"]) == 57 and all(name.startswith("mmlu_") for name in checked["mmlu"])
    expected = {
        "arc": ("acc_norm", 25),
        "hellaswag": ("acc_norm", 10),
        "mmlu": ("acc", 5),
        "truthfulqa": ("acc", 0),
        "winogrande": ("acc", 5),
        "gsm8k": ("exact_match", 5),
    }
    for spec in suite.tasks.values():
        assert (spec.metric, spec.num_fewshot) == expected[spec.key]
        for name, config in checked[spec.key].items():
            assert config.num_fewshot == spec.num_fewshot, name  # the override lands in lm-eval's config
            # The dataset we report against is the one the harness evaluates on.
            assert config.dataset_path.split("/")[-1] == spec.dataset.type.split("/")[-1], name
            assert (config.test_split or config.validation_split) == spec.dataset.split, name
            if spec.aggregation == "task":
                assert config.dataset_name == spec.dataset.config, name
    assert get_suite("gsm8k").task("gsm8k").filter == "strict-match"
    assert get_suite("mmlu").task("mmlu").aggregation == "unweighted_mean_of_subtasks"


def test_a_wrong_metric_in_the_suite_is_caught_before_running(full_task_manager, tmp_path, monkeypatch):
    text = (
        (REPO_ROOT / "eval" / "suites.yaml")
        .read_text()
        .replace("metric: acc_norm\n        num_fewshot: 25", "metric: f1\n        num_fewshot: 25")
    )
    bad = tmp_path / "suites.yaml"
    bad.write_text(text)
    suite = load_suites(bad)["arc"]
    with pytest.raises(UserError, match="has no metric 'f1'"):
        check_suite_tasks(suite, full_task_manager)


_PROMPT_FIELDS = (
    "output_type",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "process_docs",
    "process_results",
    "metric_list",
    "filter_list",
    "description",
    "target_delimiter",
    "fewshot_delimiter",
)


def _same(a, b) -> bool:
    if callable(a) or callable(b):  # loaded from different files: compare the code itself
        return callable(a) and callable(b) and inspect.getsource(a) == inspect.getsource(b)
    return a == b


def test_offline_tasks_reuse_the_leaderboard_prompts_and_metrics(full_task_manager):
    offline = check_suite_tasks(get_suite("offline_mini"), task_manager_for(get_suite("offline_mini")))
    leaderboard = check_suite_tasks(get_suite("leaderboard_v1"), full_task_manager)
    for key in LEADERBOARD_KEYS:
        for mini_name, mini in offline[key].items():
            twin_name = mini_name.removeprefix("mini_")
            twin = leaderboard[key][twin_name]
            for field in _PROMPT_FIELDS:
                assert _same(mini[field], twin[field]), (mini_name, field)
            assert mini.fewshot_config.sampler == twin.fewshot_config.sampler, mini_name
    gen = get_suite("offline_mini").task("gsm8k").overrides["generation_kwargs"]
    assert {k: v for k, v in gen.items() if k != "max_gen_toks"} == leaderboard["gsm8k"]["gsm8k"].generation_kwargs


def test_offline_tasks_build_from_the_repo_files(monkeypatch, tmp_path):
    """lm-eval really builds the offline tasks (datasets loaded from eval/data), all rows present."""
    from lm_eval.tasks import get_task_dict

    monkeypatch.chdir(REPO_ROOT)  # data_files are relative to the repo root, as `smaug eval` runs them
    suite = get_suite("offline_mini")
    task_dict = get_task_dict([s.harness_config() for s in suite.tasks.values()], task_manager_for(suite))

    def flatten(d):
        for name, value in d.items():
            yield from flatten(value) if isinstance(value, dict) else [(name, value)]

    tasks = dict(flatten(task_dict))
    counts = {name: len(list(task.eval_docs)) for name, task in tasks.items()}
    data = REPO_ROOT / "eval" / "data" / "offline_mini"
    assert counts["mini_arc_challenge"] == len((data / "arc_challenge_test.jsonl").read_text().splitlines())
    assert counts["mini_mmlu_high_school_geography"] == 10 and counts["mini_mmlu_elementary_mathematics"] == 6
    assert all(10 <= n <= 20 for name, n in counts.items() if "mmlu" not in name), counts
    arc = tasks["mini_arc_challenge"]
    doc = arc.eval_docs[0]
    assert arc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert (
        arc.doc_to_choice(doc)[arc.doc_to_target(doc)]
        == doc["choices"]["text"][doc["choices"]["label"].index(doc["answerKey"])]
    )


# --- MMLU aggregation ------------------------------------------------------------------------------------


def _constructed_mmlu() -> dict:
    # lm-eval's mmlu group is weighted by subject size: 100 docs at 0.9 swamp 10 docs at 0.1 and 0.2.
    return {
        "group_subtasks": {
            "mmlu": ["mmlu_stem", "mmlu_other"],
            "mmlu_stem": ["mmlu_a", "mmlu_b"],
            "mmlu_other": ["mmlu_c"],
            "mmlu_a": [],
            "mmlu_b": [],
            "mmlu_c": [],
        },
        "results": {
            "mmlu": {"acc,none": (0.1 * 10 + 0.2 * 10 + 0.9 * 100) / 120, "acc_stderr,none": 0.01},
            "mmlu_a": {"acc,none": 0.1, "acc_stderr,none": 0.03},
            "mmlu_b": {"acc,none": 0.2, "acc_stderr,none": 0.04},
            "mmlu_c": {"acc,none": 0.9, "acc_stderr,none": "N/A"},
        },
    }


def test_unweighted_mmlu_mean_from_subject_results():
    spec = get_suite("mmlu").task("mmlu")
    raw = _constructed_mmlu()
    assert leaf_tasks(raw["group_subtasks"], "mmlu") == ["mmlu_a", "mmlu_b", "mmlu_c"]
    agg = unweighted_subtask_mean(raw, spec)
    assert math.isclose(agg["value"], 0.4)  # (0.1 + 0.2 + 0.9) / 3
    assert agg["stderr"] is None  # one subject had no stderr
    raw["results"]["mmlu_c"]["acc_stderr,none"] = 0.12
    assert math.isclose(unweighted_subtask_mean(raw, spec)["stderr"], math.sqrt(0.03**2 + 0.04**2 + 0.12**2) / 3)
    summary = build_summary(raw, get_suite("mmlu"), {"model": "m"})
    assert math.isclose(summary["tasks"]["mmlu"]["value"], 0.4)
    assert math.isclose(summary["tasks"]["mmlu"]["harness_group_value"], 0.775)  # weighted: 93 / 120
    assert math.isclose(summary["average"], 0.4)


def test_missing_metric_in_results_names_the_task():
    raw = {"results": {"arc_challenge": {"acc,none": 0.5}}, "group_subtasks": {}}
    with pytest.raises(UserError, match="acc_norm,none.*arc_challenge"):
        build_summary(raw, get_suite("arc"), {"model": "m"})


# --- input errors, before anything heavy -----------------------------------------------------------------


@pytest.fixture
def no_harness(monkeypatch):
    import lm_eval

    def fail(*args, **kwargs):
        raise AssertionError("lm-eval must not start on bad input")

    monkeypatch.setattr(lm_eval, "simple_evaluate", fail)


@pytest.mark.parametrize("model", ["./no-such-model", "/no/such/model", "~/no-such-model-dir", "a/b/c"])
def test_missing_local_model_is_a_user_error(model, no_harness, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        evaluate(model, "offline_mini", results_root=tmp_path)


def test_path_under_an_existing_folder_is_treated_as_a_path(no_harness, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(UserError, match="model folder outputs/run1 does not exist"):
        evaluate("outputs/run1", "offline_mini", results_root=tmp_path)


def test_folder_without_config_is_a_user_error(no_harness, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        evaluate(str(tmp_path / "empty"), "offline_mini", results_root=tmp_path)


def test_a_folder_without_weights_or_tokenizer_is_refused_in_one_line_before_lm_eval(
    no_harness, tiny_model_dir, tmp_path, capsys
):
    """Issue 22.5: only config.json, or weights without tokenizer files, used to fail inside transformers."""
    from smaug.cli import main
    from smaug.evaluation.logprobs import analyse_pairs

    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tiny_model_dir / name).read_bytes())
    assert main(["eval", "run", str(only_config), "--suite", "offline_mini"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{only_config}: no weights (model.safetensors" in err and "no tokenizer files (tokenizer.json" in err
    with pytest.raises(UserError, match=r"no-tokenizer: no tokenizer files \(tokenizer.json") as refused:
        evaluate(str(no_tokenizer), "offline_mini", results_root=tmp_path)
    assert "no weights" not in str(refused.value)
    with pytest.raises(UserError, match="reference .*no-tokenizer: no tokenizer files"):
        analyse_pairs([str(tiny_model_dir)], str(no_tokenizer), [{"prompt": "a", "chosen": "b", "rejected": "c"}])


def _canned_harness(suite_name: str, value: float) -> dict:
    """lm-eval's results for every task of a suite, all scoring ``value`` (MMLU through two subjects), with one
    logged sample per task."""
    results, groups, samples = {}, {}, {}
    for spec in get_suite(suite_name).tasks.values():
        leaves = [f"{spec.task}_a", f"{spec.task}_b"] if spec.aggregation != "task" else [spec.task]
        groups.update({spec.task: leaves} if spec.aggregation != "task" else {})
        results.update({leaf: {spec.result_key: value, spec.stderr_key: 0.01} for leaf in [spec.task, *leaves]})
        sample = {"doc_id": 0, "doc": {}, "target": "A", "arguments": [["Q:", " A"]], "resps": [[["-1.5", "True"]]]}
        sample |= {"filtered_resps": [["-1.5", "True"]], "filter": spec.filter or "none", spec.metric: value}
        samples.update({leaf: [dict(sample)] for leaf in leaves})
    return {"results": results, "group_subtasks": groups, "config": {"model": "hf"}, "samples": samples}


def test_results_of_an_interrupted_run_never_pair_a_summary_with_other_raw_results(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Issue 22.3: harness.json, summary.json and summary.md are replaced as one set; a summary that does not
    belong to the harness.json beside it is refused, by `eval compare` and by the model card."""
    import lm_eval

    from smaug.cli import main
    from smaug.evaluation import summary as summary_mod
    from smaug.evaluation.summary import load_summary

    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: _canned_harness("offline_mini", 0.25))
    out = evaluate(str(tiny_model_dir), "offline_mini", device="cpu", results_root=tmp_path)
    first = {name: (out / name).read_bytes() for name in ("harness.json", "summary.json", "summary.md")}

    def killed(summary):
        raise KeyboardInterrupt  # the run dies after lm-eval, between its output files

    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: _canned_harness("offline_mini", 0.75))
    monkeypatch.setattr(summary_mod, "render_summary_md", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(tiny_model_dir), "offline_mini", device="cpu", results_root=tmp_path)
    assert {name: (out / name).read_bytes() for name in first} == first  # the old set, whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["offline_mini"]  # no temp folder left
    raw = json.loads((out / "harness.json").read_text())
    assert (
        load_summary(out / "summary.json").tasks["arc"].value == raw["results"]["mini_arc_challenge"]["acc_norm,none"]
    )

    # A summary beside raw results of another run (files copied from two runs) says so, wherever it is read.
    (out / "harness.json").write_text(json.dumps(_canned_harness("offline_mini", 0.75)))
    with pytest.raises(UserError, match="summary.json was not computed from the harness.json beside it"):
        load_summary(out / "summary.json")
    assert main(["eval", "compare", str(out)]) == 2


def test_hub_id_offline_and_not_cached_is_a_user_error(no_harness, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        evaluate("smaug-tests/not-cached", "offline_mini", results_root=tmp_path)


def test_hub_id_in_the_offline_cache_records_its_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--smaug-tests--cached"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    resolved = resolve_model("smaug-tests/cached")
    assert (resolved.name, resolved.local, resolved.revision) == ("smaug-tests/cached", False, commit)


def test_unknown_suite_lists_the_known_ones(no_harness, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="unknown suite 'leaderboard_v2'.*leaderboard_v1.*offline_mini.*gsm8k"):
        evaluate(str(tiny_model_dir), "leaderboard_v2", results_root=tmp_path)


def test_local_revision_follows_the_folder_content(tiny_model_copy):
    before = resolve_model(str(tiny_model_copy)).revision
    config = json.loads((tiny_model_copy / "config.json").read_text())
    config["rope_theta"] = 1234.0
    (tiny_model_copy / "config.json").write_text(json.dumps(config))
    assert resolve_model(str(tiny_model_copy)).revision != before


def test_broken_suites_file_names_the_field(tmp_path):
    bad = tmp_path / "suites.yaml"
    bad.write_text("suites:\n  s:\n    tasks:\n      arc: {task: arc_challenge, metric: acc, dataset: {}}\n")
    with pytest.raises(UserError, match=r"field `suites\.s\.tasks\.arc\.num_fewshot`: field required"):
        load_suites(bad)


def test_cli_arguments():
    args = _parse(["eval", "run", "org/model", "--suite", "gsm8k", "--batch-size", "auto", "--limit", "0.5"])
    parsed = (args.model, args.suite, args.batch_size, args.limit, args.dtype, args.backend, args.num_gpus)
    assert parsed == ("org/model", "gsm8k", "auto", 0.5, None, "hf", 1)  # dtype None: picked for the device
    assert _parse(["eval", "run", "m", "--backend", "vllm", "--num-gpus", "8"]).num_gpus == 8
    assert _parse(["eval", "run", "m", "--limit", "20"]).limit == 20
    with pytest.raises(SystemExit):
        _parse(["eval", "run", "m", "--batch-size", "0"])
    with pytest.raises(SystemExit):
        _parse(["eval", "run", "m", "--dtype", "int3"])


# --- comparison tables -----------------------------------------------------------------------------------


def _summary(model: str, values: dict[str, float], limit=None) -> Summary:
    raw = {"group_subtasks": {}, "results": {}}
    suite = get_suite("leaderboard_v1")
    for spec in suite.tasks.values():
        if spec.aggregation == "task":
            raw["results"][spec.task] = {spec.result_key: values[spec.key]}
        else:
            raw["group_subtasks"][spec.task] = ["s1", "s2"]
            for subject in ("s1", "s2"):
                raw["results"][subject] = {spec.result_key: values[spec.key]}
    return Summary.model_validate(build_summary(raw, suite, {"model": model, "limit": limit}))


def test_compare_table_rows_models_columns_tasks():
    smaug = [0.7474, 0.8676, 0.7702, 0.7022, 0.8350, 0.7210]
    a = _summary("abacusai/Smaug-34B-v0.1", dict(zip(LEADERBOARD_KEYS, smaug)))
    b = _summary("jondurbin/bagel-34b-v0.2", dict(zip(LEADERBOARD_KEYS, [0.7, 0.8, 0.75, 0.6, 0.8, 0.5])), limit=10)
    lines = compare_table([a, b]).splitlines()
    assert lines[0] == "| Model | Average | ARC | HellaSwag | MMLU | TruthfulQA | Winogrande | GSM8K |"
    assert lines[2] == "| abacusai/Smaug-34B-v0.1 | 77.39 | 74.74 | 86.76 | 77.02 | 70.22 | 83.50 | 72.10 |"
    assert lines[3].startswith("| jondurbin/bagel-34b-v0.2 * | 69.17 | 70.00 |")
    assert "--limit" in lines[-1]
    with pytest.raises(UserError, match="different suites"):
        compare_table([a, b.model_copy(update={"suite": "offline_mini"})])


def test_compare_cli_finds_summaries_by_model_folder_or_file(offline_run, tiny_model_dir, tmp_path, capsys):
    out_dir, root = offline_run
    assert find_summary(str(tiny_model_dir), "offline_mini", root) == out_dir / "summary.json"
    assert find_summary(str(out_dir), "offline_mini", root) == out_dir / "summary.json"
    table_file = tmp_path / "table.md"
    args = _parse(
        [
            "eval",
            "compare",
            str(tiny_model_dir),
            str(out_dir / "summary.json"),
            "--suite",
            "offline_mini",
            "--results-dir",
            str(root),
            "--out",
            str(table_file),
        ]
    )
    assert args.func(args) == 0
    table = table_file.read_text()
    assert table in capsys.readouterr().out
    assert table.count(str(tiny_model_dir.resolve())) == 2
    with pytest.raises(UserError, match="run `smaug eval run nobody/nothing --suite offline_mini` first"):
        find_summary("nobody/nothing", "offline_mini", root)


def test_summary_markdown_flags_limited_runs():
    md = render_summary_md(_summary("m", dict.fromkeys(LEADERBOARD_KEYS, 0.5), limit=10))
    assert "not comparable" in md and "| **50.00** |" in md
    assert "not comparable" not in render_summary_md(_summary("m", dict.fromkeys(LEADERBOARD_KEYS, 0.5)))


def test_task_configs_live_in_the_repo():
    assert TASKS_DIR == REPO_ROOT / "eval" / "tasks" and (TASKS_DIR / "offline_mini" / "mini_mmlu.yaml").is_file()
    assert Path(REPO_ROOT / "eval" / "README.md").is_file()


def test_smaug_cli_reports_bad_input_without_traceback(no_harness, capsys):
    from smaug.cli import main

    assert main(["eval", "run", "./no-such-model", "--suite", "offline_mini"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model folder ./no-such-model does not exist") and "Traceback" not in err


# --- inputs a user gets wrong: one line, no traceback, nothing run ----------------------------------------------
@pytest.mark.parametrize("limit", ["nan", "inf", "-inf", "0", "-3", "1.5", "ten"])
def test_limit_must_be_a_count_or_a_fraction(limit, capsys):
    from smaug.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["eval", "run", "m", "--limit", limit])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --limit" in err and "Traceback" not in err
    assert _parse(["eval", "run", "m", "--limit", "1e3"]).limit == 1000


def test_limit_nan_through_the_python_api_is_refused(no_harness, tiny_model_dir, tmp_path):
    for limit in (math.nan, math.inf, 2.5, True):
        with pytest.raises(UserError, match="--limit"):
            evaluate(str(tiny_model_dir), "offline_mini", limit=limit, results_root=tmp_path)


@pytest.mark.parametrize(
    "option,value", [("--batch-size", "0"), ("--limit", "-1"), ("--window", "-1"), ("--max-length", "0")]
)
def test_counts_of_the_analysis_tools_are_checked_by_the_parser(option, value, capsys):
    from smaug.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "logprobs", "--models", "m", "--reference", "r", "--pairs", "p", "--out", "o", option, value])
    assert f"argument {option}" in capsys.readouterr().err


def test_results_dir_that_is_a_file_is_refused_before_the_model_loads(no_harness, tiny_model_dir, tmp_path, capsys):
    from smaug.cli import main

    results = tmp_path / "results.txt"
    results.write_text("not a folder")
    with pytest.raises(UserError, match=r"results.txt is a file, not a folder"):
        evaluate(str(tiny_model_dir), "offline_mini", results_root=results)
    assert main(["eval", "compare", str(tiny_model_dir), "--results-dir", str(results)]) == 2
    assert "--results-dir" in capsys.readouterr().err


GOOD_TASK = {
    "task": "arc_challenge",
    "metric": "acc_norm",
    "value": 0.5,
    "num_fewshot": 25,
    "dataset": {"name": "ARC", "type": "ai2_arc", "config": "ARC-Challenge", "split": "test"},
}
GOOD_SUMMARY = {"model": "m", "suite": "leaderboard_v1", "average": 0.5, "tasks": {"arc": GOOD_TASK}}


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"", "the file is empty"),
        (b"  \n", "the file is empty"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b'{"model": "m",\n "suite": }', "s.json:2: not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"[]", "s.json: input should be a valid dictionary"),
        (
            json.dumps({**GOOD_SUMMARY, "suite": ["a"]}).encode(),
            "field `suite`: input should be a valid string (got ['a'])",
        ),
        (
            json.dumps({**GOOD_SUMMARY, "average": "high"}).encode(),
            "field `average`: input should be a valid number (got 'high')",
        ),
        (
            json.dumps({**GOOD_SUMMARY, "versions": ["x"]}).encode(),
            "field `versions`: input should be a valid dictionary",
        ),
        (
            json.dumps({**GOOD_SUMMARY, "tasks": {"arc": 3}}).encode(),
            "field `tasks.arc`: input should be a valid dictionary (got 3)",
        ),
        (
            json.dumps({**GOOD_SUMMARY, "tasks": {"arc": {**GOOD_TASK, "num_fewshot": "25"}}}).encode(),
            "field `tasks.arc.num_fewshot`: input should be a valid integer (got '25')",
        ),
        (
            json.dumps({**GOOD_SUMMARY, "tasks": {"arc": {**GOOD_TASK, "dataset": "ARC"}}}).encode(),
            "field `tasks.arc.dataset`: input should be a valid dictionary (got 'ARC')",
        ),
        (
            json.dumps(
                {**GOOD_SUMMARY, "tasks": {"arc": {**GOOD_TASK, "dataset": {"name": "ARC", "type": 5}}}}
            ).encode(),
            "field `tasks.arc.dataset.type`: input should be a valid string (got 5)",
        ),
        (
            b'{"model": "m", "suite": "s", "average": NaN, "tasks": {}}',
            "field `average`: input should be a finite number (got nan)",
        ),
    ],
)
def test_wrong_summary_files_are_named_with_the_problem(tmp_path, capsys, content, problem):
    from smaug.cli import main
    from smaug.evaluation.summary import load_summary

    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match="s.json") as err:
        load_summary(path)
    assert problem in str(err.value)
    assert main(["eval", "compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and problem in err and "Traceback" not in err


def test_compare_refuses_to_write_over_its_input(tmp_path):
    from smaug.cli import main

    path = tmp_path / "s.json"
    path.write_text(json.dumps(GOOD_SUMMARY))
    assert main(["eval", "compare", str(path), "--out", str(path)]) == 2
    assert json.loads(path.read_text()) == GOOD_SUMMARY


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "run", "{model}", "--suite", "offline_mini", "--device", "foo"], "--device 'foo' is not a device"),
        (["eval", "run", "{model}", "--suite", "offline_mini", "--device", "cuda:999"], "CUDA device(s)"),
        (["eval", "run", "{tmp}/broken", "--suite", "offline_mini"], "broken/config.json: not a model config"),
        (
            [
                "eval",
                "logprobs",
                "--models",
                "{model}",
                "--reference",
                "{model}",
                "--pairs",
                "{tmp}/p.jsonl",
                "--out",
                "{tmp}/lp",
                "--device",
                "tpu",
            ],
            "--device 'tpu'",
        ),
        (
            ["eval", "plot-training", "{tmp}/binary.json", "--out", "{tmp}/o.png"],
            "binary.json: not a trainer_state.json",
        ),
        (["eval", "plot-training", "{tmp}/wrong.json", "--out", "{tmp}/o.png"], "log_history is a int, not a list"),
        (
            [
                "eval",
                "mtbench",
                "--model",
                "{model}",
                "--judge-url",
                "http://127.0.0.1:30098/v1",
                "--judge-model",
                "j",
                "--config",
                "{tmp}/broken.yaml",
            ],
            "broken.yaml: not a readable YAML MT-Bench config",
        ),
        (
            ["eval", "mtbench", "--model", "{model}", "--judge-url", "http://127.0.0.1:30098/v1", "--judge-model", "j"]
            + ["--limit", "1", "--backend", "vllm"],
            "--backend vllm: vLLM is not installed in this environment",
        ),
    ],
)
def test_eval_tool_inputs_fail_in_one_line_before_any_model_loads(
    no_harness, tiny_model_dir, tmp_path, capsys, monkeypatch, argv, message
):
    from smaug.cli import main
    from smaug.evaluation import models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama"')
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "wrong.json").write_text('{"log_history": 5}')
    (tmp_path / "broken.yaml").write_text("chat_template: [\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    argv = [a.format(model=tiny_model_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_batch_size_auto_needs_a_count():
    assert _parse(["eval", "run", "m", "--batch-size", "auto:4"]).batch_size == "auto:4"
    with pytest.raises(SystemExit):
        _parse(["eval", "run", "m", "--batch-size", "auto:x"])


# --- per-sample differences between two runs (issue 24.3) ----------------------------------------------------


def test_compare_diff_lists_the_items_two_runs_score_differently(offline_run, tmp_path, capsys):
    """Run B is run A with one ARC item's acc_norm flipped in its sample log (and the hash updated): --diff finds
    that item and no other; a log that no longer matches its summary's hash is refused."""
    from smaug.cli import main

    out_dir, _ = offline_run
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(out_dir, a)
    shutil.copytree(out_dir, b)
    summary = json.loads((b / "summary.json").read_text())
    log = b / summary["samples"]["mini_arc_challenge"]["file"]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    flipped = next(r for r in rows if r["doc_id"] == 3)
    flipped["acc_norm"] = 1.0 - flipped["acc_norm"]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary["samples"]["mini_arc_challenge"]["sha256"] = hashlib.sha256(log.read_bytes()).hexdigest()
    (b / "summary.json").write_text(json.dumps(summary))

    assert main(["eval", "compare", str(a), str(b), "--diff", "5"]) == 0
    out = capsys.readouterr().out
    assert "## ARC: 1 of 8 items differ on acc_norm" in out
    assert (
        f"| mini_arc_challenge | 3 | {flipped['target']} | {1.0 - flipped['acc_norm']} | {flipped['acc_norm']} |" in out
    )
    assert "## GSM8K: 0 of 8 items differ on exact_match" in out and "## MMLU: 0 of 14 items differ" in out

    log.write_text(log.read_text() + "\n")  # the log no longer the one the summary names
    assert main(["eval", "compare", str(a), str(b), "--diff", "5"]) == 2
    assert "not the file summary.json was computed from" in capsys.readouterr().err
    assert main(["eval", "compare", str(a), str(a), str(a), "--diff", "5"]) == 2
    assert "--diff compares two runs; 3 were given" in capsys.readouterr().err


# --- backends (issue 24.2) -------------------------------------------------------------------------------------


def test_both_backends_get_the_same_suite_settings(tiny_model_dir, tmp_path, monkeypatch):
    """lm-eval receives the same tasks, shots, batch size, limit and dtype whatever the backend; vLLM's model_args
    are the HF backend's plus tensor parallelism."""
    import lm_eval

    from smaug.evaluation import harness

    calls = []

    def record(**kwargs):
        calls.append(kwargs)
        return _canned_harness("offline_mini", 0.5)

    monkeypatch.setattr(lm_eval, "simple_evaluate", record)
    monkeypatch.setattr(harness, "check_vllm", lambda num_gpus: None)  # no vLLM nor GPU here
    for backend, gpus in (("hf", 1), ("vllm", 2)):
        evaluate(str(tiny_model_dir), "offline_mini", backend=backend, num_gpus=gpus, limit=3, results_root=tmp_path)
    hf, vllm = calls
    assert (hf.pop("model"), vllm.pop("model")) == ("hf", "vllm")
    assert vllm.pop("model_args") == {**hf.pop("model_args"), "tensor_parallel_size": 2}
    managers = hf.pop("task_manager"), vllm.pop("task_manager")  # one per run, built the same way
    assert managers[0].all_tasks == managers[1].all_tasks
    assert hf == vllm and hf["limit"] == 3 and hf["log_samples"] is True

    # What leaderboard_v1 runs of a Hub model pass to each backend (eval/README.md quotes these).
    smaug = ResolvedModel("abacusai/Smaug-72B-v0.1", local=False, revision="a" * 40)
    expected = {"pretrained": "abacusai/Smaug-72B-v0.1", "dtype": "bfloat16", "trust_remote_code": False}
    expected["revision"] = "a" * 40
    assert backend_arguments("hf", smaug, dtype="bfloat16") == expected
    assert backend_arguments("vllm", smaug, dtype="bfloat16", num_gpus=8) == {**expected, "tensor_parallel_size": 8}
    with pytest.raises(UserError, match="the hf backend runs on one device"):
        evaluate(str(tiny_model_dir), "offline_mini", backend="hf", num_gpus=2, results_root=tmp_path)


def test_vllm_missing_or_too_few_gpus_is_one_line_before_anything_loads(
    no_harness, tiny_model_dir, monkeypatch, capsys
):
    import importlib.util

    from smaug.cli import main

    argv = ["eval", "run", str(tiny_model_dir), "--suite", "offline_mini", "--backend", "vllm", "--num-gpus", "2"]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--backend vllm: vLLM is not installed in this environment" in err and err.count("\n") == 1
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a)
    )
    assert main(argv) == 2
    assert "--backend vllm needs 2 GPU(s) (--num-gpus / NUM_GPUS); 0 visible" in capsys.readouterr().err


# --- the CPU default dtype (issue 24.5) -----------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_cpu_dtype_follows_native_bf16(native, tiny_model_dir, tmp_path, monkeypatch):
    import lm_eval
    import torch

    from smaug.evaluation.models import default_dtype, load_causal_lm

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: native)
    expected = "bfloat16" if native else "float32"
    assert default_dtype("cpu") == expected
    assert load_causal_lm(str(tiny_model_dir), device="cpu").dtype == getattr(torch, expected)
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: _canned_harness("offline_mini", 0.5))
    out = evaluate(str(tiny_model_dir), "offline_mini", device="cpu", results_root=tmp_path)
    assert load_summary(out / "summary.json").dtype == expected


# --- the paper's numbers (issue 21.3) -------------------------------------------------------------------------


def test_paper_results_are_valid_and_add_up():
    from smaug.evaluation.contamination import BENCHMARKS
    from smaug.evaluation.suites import PAPER_KEYS, load_paper_results

    assert PAPER_KEYS["contamination"] == set(BENCHMARKS)  # what contamination.json can hold
    results = load_paper_results()
    for name in ("smaug-72b", "smaug-34b"):
        scores = results[name].scores
        assert list(scores) == ["average", *LEADERBOARD_KEYS]
        mean = sum(scores[k] for k in LEADERBOARD_KEYS) / 6
        assert abs(mean - scores["average"]) <= 0.005 + 1e-9, name  # the six transcribed right
    mtbench = results["smaug-72b-mtbench"].scores
    assert mtbench["overall"] == 7.76 and round((mtbench["turn1"] + mtbench["turn2"]) / 2, 2) == 7.76
    dpo, dpop = results["smaug-7b-dpo-mtbench"], results["smaug-7b-dpop-mtbench"]
    assert (dpo.scores, dpo.std, dpop.scores, dpop.std) == (
        {"turn1": 7.032},
        {"turn1": 0.043},
        {"turn1": 7.292},
        {"turn1": 0.037},
    )
    assert results["smaug-72b-contamination"].scores == {"arc": 0.20, "truthfulqa": 0.45, "gsm8k": 1.00}
    assert all(entry.where and entry.source for entry in results.values())


def test_compare_paper_prints_ours_beside_the_paper(tmp_path, capsys):
    from smaug.cli import main

    ours = _summary("me/smaug", dict(zip(LEADERBOARD_KEYS, [0.7474, 0.8676, 0.7702, 0.7022, 0.8350, 0.7210])))
    (tmp_path / "summary.json").write_text(ours.model_dump_json())
    assert main(["eval", "compare", str(tmp_path / "summary.json"), "--paper", "smaug-72b"]) == 0
    out = capsys.readouterr().out
    assert "| Score | Paper | me/smaug | Δ |" in out and "| arc | 76.02 | 74.74 | -1.28 |" in out
    assert f"| average | 80.48 | {100 * ours.average:.2f} | {100 * ours.average - 80.48:+.2f} |" in out
    mtbench = tmp_path / "mt"
    mtbench.mkdir()
    turns = {"turn1": {"mean": 7.5}, "turn2": {"mean": 6.5}, "overall": {"mean": 7.0}}
    (mtbench / "mtbench.json").write_text(json.dumps({"model": "me/7b", **turns}))
    assert main(["eval", "compare", str(mtbench), "--paper", "smaug-7b-dpop-mtbench"]) == 0
    assert "| turn1 | 7.292 ± 0.037 | 7.500 | +0.208 |" in capsys.readouterr().out
    (mtbench / "mtbench.json").write_text(json.dumps({"model": "me/7b", "turn1": {"mean": 7.5}}))
    assert main(["eval", "compare", str(mtbench), "--paper", "smaug-7b-dpop-mtbench"]) == 2
    assert (
        "mtbench.json: not the mtbench.json `smaug eval mtbench` writes (KeyError('turn2'))" in capsys.readouterr().err
    )
    assert main(["eval", "compare", str(mtbench), "--paper", "smaug-9000"]) == 2
    assert "--paper 'smaug-9000': not in eval/paper_results.yaml" in capsys.readouterr().err


def test_a_wrong_paper_results_file_names_the_entry(tmp_path):
    from smaug.evaluation.suites import load_paper_results

    bad = tmp_path / "paper.yaml"
    entry = {"what": "x", "kind": "mtbench", "where": "Table 2", "source": "card", "scores": {"turn3": 1.0}}
    bad.write_text(json.dumps({"paper": "p", "results": {"e": entry}}))
    with pytest.raises(UserError, match=r"results.e: \['turn3'\] are not among the scores compared"):
        load_paper_results(bad)
    bad.write_text(json.dumps({"paper": "p", "results": {"e": {**entry, "kind": "summary", "scores": {"arc": 1}}}}))
    with pytest.raises(UserError, match="results.e: `suite` is needed for kind summary"):
        load_paper_results(bad)
    bad.write_text(json.dumps({"paper": "p", "results": {"e": {**entry, "where": ""}}}))
    with pytest.raises(UserError, match="field `results.e.where`"):
        load_paper_results(bad)
