"""The real `axolotl train` CLI with rl: dpop (and rl: dpo next to it), on a tiny model, CPU, offline."""

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.axolotl_runner import assert_ok, axolotl_env, log_history, run_axolotl_train, tiny_config, write_pairs

pytestmark = pytest.mark.slow
DPOP_KEYS = {"dpop/penalty", "dpop/active_fraction"}
TRL_KEYS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
}


# Runs that the chunked-head tests below repeat with dpop_chunked_logps: true and compare step by step.
LORA = {
    "adapter": "lora",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_target_linear": True,
    "gradient_checkpointing": True,
    "gradient_accumulation_steps": 2,
    "micro_batch_size": 2,
}
PRECOMPUTE = {
    "precompute_ref_log_probs": True,
    "gradient_checkpointing": True,
    "gradient_accumulation_steps": 2,
    "micro_batch_size": 2,
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


@pytest.fixture(scope="module")
def pairs_with_identical(pairs):
    """The same 24 pairs in the same order, with 8 pairs whose chosen and rejected are identical in between."""
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    for index in range(len(rows), 0, -3):
        rows.insert(index, dict(rows[index - 1], rejected=rows[index - 1]["chosen"]))
    path = pairs.with_name("pairs-with-identical.jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _train(tmp_path, tiny_model_dir, pairs, name, launcher_args=None, env=None, **overrides):
    out = tmp_path / name / "out"
    cfg = tiny_config(tiny_model_dir, pairs, out, **overrides)
    proc = run_axolotl_train(cfg, tmp_path / name, launcher_args=launcher_args, env=env)
    assert_ok(proc)
    return out, log_history(out), proc


@pytest.fixture(scope="module")
def ref_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ref-logps-cache")


@pytest.fixture(scope="module")
def without_smaug(tmp_path_factory) -> dict[str, str]:
    """An environment in which `import smaug` fails (a package of that name first on the path that raises),
    so a run in it shows the plugin needs only its own distribution."""
    stub = tmp_path_factory.mktemp("no-smaug")
    (stub / "smaug").mkdir()
    (stub / "smaug" / "__init__.py").write_text("raise ImportError('smaug is not importable in this test')\n")
    return {"PYTHONPATH": str(stub)}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, pairs, without_smaug):
    return _train(tmp_path_factory.mktemp("runs"), tiny_model_dir, pairs, "lora", env=without_smaug, **LORA)


@pytest.fixture(scope="module")
def precompute_run(tmp_path_factory, tiny_model_dir, pairs, ref_cache_dir):
    """The plain full fine-tune of these tests (4 steps), with precomputed reference log-probs."""
    return _train(
        tmp_path_factory.mktemp("runs"),
        tiny_model_dir,
        pairs,
        "precompute",
        dpop_ref_logps_cache_dir=str(ref_cache_dir),
        max_steps=4,
        save_steps=4,
        **PRECOMPUTE,
    )


def test_full_finetune_logs_dpop_metrics_and_saves_a_loadable_model(precompute_run, tiny_model_dir):
    out, logs, _ = precompute_run
    assert len(logs) == 4
    for entry in logs:
        assert DPOP_KEYS | TRL_KEYS <= entry.keys()
        assert 0.0 <= entry["dpop/active_fraction"] <= 1.0 and entry["dpop/penalty"] >= 0.0
    # step 1: policy = reference, so the penalty is off and the loss is log 2
    assert logs[0]["dpop/penalty"] == 0.0 and logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # lr 5e-4 on a random model pushes some chosen log-probs below the reference: the penalty must notice
    assert max(entry["dpop/active_fraction"] for entry in logs[1:]) > 0

    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diffs = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values())]
    assert any(diffs), "training changed no weight"
    provenance = json.loads((out / "smaug_provenance.json").read_text())
    assert provenance["training"]["rl"] == "dpop" and provenance["training"]["dpop_lambda"] == 50.0
    assert provenance["base_model"] == str(tiny_model_dir)


def test_the_plugin_trains_without_smaug_importable(lora_run, without_smaug):
    probe = subprocess.run(
        [sys.executable, "-c", "import smaug"], env=axolotl_env(without_smaug), capture_output=True, text=True
    )
    assert probe.returncode != 0 and "smaug is not importable in this test" in probe.stderr
    _, history, proc = lora_run  # trained in that environment, with the plugin's loss
    assert len(history) == 3 and DPOP_KEYS <= set(history[0])
    assert "smaug is not importable" not in proc.stdout + proc.stderr


def test_lora_reference_is_the_adapter_disabled(lora_run):
    out, logs, _ = lora_run
    assert all(DPOP_KEYS <= entry.keys() for entry in logs)
    # LoRA's B matrix starts at zero: at step 1 the policy IS the adapter-disabled reference
    assert logs[0]["rewards/chosen"] == 0.0 and logs[0]["rewards/rejected"] == 0.0
    assert logs[-1]["rewards/chosen"] != 0.0

    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert model.peft_config["default"].r == 4


def test_precomputed_reference_log_probs(precompute_run, ref_cache_dir):
    _, logs, proc = precompute_run
    output = proc.stdout + proc.stderr
    assert "Computing reference log probs" in output
    # a full fine-tune with precomputed reference log-probs keeps no second copy of the model
    assert "no reference model is loaded" in output
    assert len(list(ref_cache_dir.glob("*.safetensors"))) == 1
    assert all(DPOP_KEYS <= entry.keys() for entry in logs)
    assert logs[0]["rewards/chosen"] == 0.0 and logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_every_preference_rl_trains_on_the_same_checked_rows_and_lambda_zero_is_dpo(
    tmp_path, tiny_model_dir, pairs, pairs_with_identical
):
    """rl: dpo without the plugin on the pairs; rl: dpo with the plugin and rl: dpop with lambda 0 on the same pairs
    with identical ones in between: the plugin drops those for every arm, so all three train on the same rows."""
    common = {"rl": "dpo", "dpop_lambda": None, "max_steps": 4, "save_steps": 4, "shuffle_merged_datasets": False}
    _, without, _ = _train(tmp_path, tiny_model_dir, pairs, "dpo-bare", plugins=None, **common)
    _, with_plugin, dpo_proc = _train(tmp_path, tiny_model_dir, pairs_with_identical, "dpo-plugin", **common)
    _, dpop_zero, dpop_proc = _train(
        tmp_path, tiny_model_dir, pairs_with_identical, "dpop-0", **{**common, "rl": "dpop", "dpop_lambda": 0}
    )
    for proc, logs in ((dpo_proc, with_plugin), (dpop_proc, dpop_zero)):
        log = proc.stdout + proc.stderr
        assert "8 of 32 rows have identical chosen and rejected" in log
        assert "dropped 8 of 32 train pairs" in log
        assert logs[-1]["epoch"] == pytest.approx(16 / 24)  # 4 steps x 4 pairs over the 24 kept pairs
    losses = [e["loss"] for e in without]
    assert [e["loss"] for e in with_plugin] == losses
    assert not any(DPOP_KEYS & e.keys() for e in with_plugin)
    # our DPOPTrainer with lambda = 0 reproduces TRL's own DPO loss step by step, on the same rows
    assert [e["loss"] for e in dpop_zero] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    assert [e["logps/chosen"] for e in dpop_zero] == pytest.approx([e["logps/chosen"] for e in without], rel=1e-5)
    assert losses[0] != losses[-1]


def test_two_process_cpu_launch(tmp_path, tiny_model_dir, pairs, monkeypatch):
    """Also the shared forward with question-level grouping (each rank takes its own micro-batches of whole
    groups; here every question has one pair, so the epoch arithmetic is that of plain batches)."""
    # accelerate's multi-process launcher; ACCELERATE_USE_CPU makes it pick gloo on a machine without CUDA.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    launcher = [
        "--",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
    ]
    _, logs, proc = _train(
        tmp_path,
        tiny_model_dir,
        pairs,
        "ddp",
        launcher_args=launcher,
        max_steps=2,
        save_steps=2,
        dpop_shared_prefix=True,
        dpop_group_pairs=True,
    )
    output = proc.stdout + proc.stderr
    assert '"world_size": 2' in output and "prefix-shared forward" in output
    # both ranks' batches count: 2 steps x 2 processes x micro_batch 4 pairs = 16 of 24 pairs = 2/3 epoch
    assert logs[-1]["epoch"] == pytest.approx(16 / 24, rel=1e-3)
    assert all(DPOP_KEYS <= entry.keys() for entry in logs)


def test_slic_loss_is_the_papers_formula_on_the_logged_log_probs_without_a_reference(tmp_path, tiny_model_dir, pairs):
    # One pair per step, so each logged value is that pair's own: the hinge can be recomputed from the logged
    # log-probs. beta 5 nats keeps the hinge active on the tiny random model's near-equal pairs.
    beta, lam = 5.0, 0.5
    out, logs, proc = _train(
        tmp_path,
        tiny_model_dir,
        pairs,
        "slic",
        rl="slic",
        dpop_lambda=None,
        slic_lambda=lam,
        rl_beta=beta,
        micro_batch_size=1,
        max_steps=1,
        save_steps=1,
    )
    first = logs[0]
    chosen, rejected = first["logps/chosen"], first["logps/rejected"]
    hinge = max(0.0, beta - chosen + rejected)
    assert hinge > 0
    assert first["loss"] == pytest.approx(hinge - lam * chosen, rel=1e-5)
    assert first["slic/hinge"] == pytest.approx(hinge, rel=1e-5)
    assert first["slic/regulariser"] == pytest.approx(-chosen, rel=1e-6)
    assert first["rewards/margins"] == pytest.approx(chosen - rejected, rel=1e-5)  # policy log-prob margin
    assert not DPOP_KEYS & first.keys()
    # No reference model: one set of weights loaded (an rl: dpop run loads two: policy and reference; TRL's own
    # fallback copy would be a second load too), the trainer holds none, and SLiCTrainer.compute_ref_log_probs
    # (which raises) was never called, or the run would have failed.
    log = proc.stdout + proc.stderr
    assert log.count("Loading weights: 100%") == 1
    assert f"SLIC: beta={beta} lambda={lam}; reference model: None" in log
    provenance = json.loads((out / "smaug_provenance.json").read_text())
    assert provenance["training"]["rl"] == "slic" and provenance["training"]["slic_lambda"] == lam


# --- dpop_chunked_logps: the same runs with the token-chunked head, compared step by step -----------------


def _assert_same_steps(chunked, unchunked, rel=1e-6):
    """Step by step after AdamW updates: the last digits of the gradients differ (summation order), and
    Adam's normalisation passes that on (its first update is ~lr x the gradient's sign, whatever its size), so
    the tolerance is ``rel`` + 1e-5 absolute (margins and penalties are differences of ~190-nat log-probs)."""
    assert len(chunked) == len(unchunked) >= 3
    for key in (
        "loss",
        "logps/chosen",
        "logps/rejected",
        "rewards/chosen",
        "rewards/margins",
        "dpop/penalty",
        "entropy",
        "logits/chosen",
        "mean_token_accuracy",
    ):
        assert [e[key] for e in chunked] == pytest.approx([e[key] for e in unchunked], rel=rel, abs=1e-5), key
    assert unchunked[-1]["loss"] != unchunked[0]["loss"]


def test_shared_prefix_with_precompute_hits_the_cache_and_matches(
    tmp_path, tiny_model_dir, pairs, precompute_run, ref_cache_dir
):
    """The prefix-shared forward (with its chunked head) against the full-logits run: full fine-tune, gradient
    accumulation and checkpointing, precomputed reference. The second run (same reference model, data and
    tokenisation) reads the first run's reference log-probs from the cache: the switch is not in its key, as
    the two forwards compute the same numbers."""
    _, logs, proc = _train(
        tmp_path,
        tiny_model_dir,
        pairs,
        "precompute-shared",
        dpop_shared_prefix=True,
        attn_implementation="sdpa",
        dpop_logps_chunk_size=16,
        dpop_ref_logps_cache_dir=str(ref_cache_dir),
        max_steps=4,
        save_steps=4,
        **PRECOMPUTE,
    )
    output = proc.stdout + proc.stderr
    assert "prefix-shared forward, chunked log-probs, 16 completion tokens per chunk" in output
    assert "read from the cache" in output and "Computing reference log probs" not in output
    # The two forwards round differently (the chunked head alone does not): after AdamW updates the loss and
    # penalty of this run differ by up to 3e-5 relative (measured), so 1e-4 here.
    _assert_same_steps(logs, precompute_run[1], rel=1e-4)


def test_chunked_head_with_lora_matches(tmp_path, tiny_model_dir, pairs, lora_run):
    """With gradient accumulation and checkpointing. Also shows that two LoRA runs of one config draw the same
    adapter (the plugin seeds before loading)."""
    _, logs, proc = _train(
        tmp_path, tiny_model_dir, pairs, "lora-chunked", dpop_chunked_logps=True, dpop_logps_chunk_size=16, **LORA
    )
    assert "chunked log-probs" in proc.stdout + proc.stderr
    _assert_same_steps(logs, lora_run[1])
