"""DeepSpeed ZeRO-3 the way the Smaug recipes use it (plain, optimizer offload, full CPU offload), rehearsed on
two CPU processes (gloo) through the real `axolotl train` CLI: a full fine-tune with `rl: dpop` and a separate
frozen reference model, compared step by step with one process without DeepSpeed on the same global batch;
and two "nodes" on this machine started with the stage chain's own multi-node command.

The DeepSpeed configs are the committed files with only what a CPU needs changed (tests/cpu_deepspeed.py:
bf16 off); the hyperparameters come from the recipe that uses each config. Sizes and steps are tiny.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import torch

from smaug import chain as C
from smaug import recipes as R
from smaug.paths import RECIPES_DIR, REPO_ROOT
from tests.axolotl_runner import (assert_ok, axolotl_env, log_history, run_axolotl_train, tiny_config, write_config,
                                  write_pairs)
from tests.cpu_deepspeed import CPU_CHANGES, PLUGIN, REPORT, cpu_variant

# The full fine-tune DPOP recipes: between them they use every ZeRO config in recipes/deepspeed/.
DPOP_RECIPES = ["smaug7b_dpop.yml", "smaug34b_dpop.yml", "smaug72b_dpop.yml"]
FROM_RECIPE = ("rl", "rl_beta", "dpop_lambda", "optimizer", "learning_rate", "weight_decay", "max_grad_norm",
               "gradient_checkpointing", "gradient_checkpointing_kwargs")
RANKS, MICRO, GRAD_ACC, STEPS = 2, 1, 2, 3  # global batch 4 pairs = 2 ranks x 1 x 2 = 1 process x 2 x 2
# Both sides train in fp32 and differ only in summation order (gloo reduce-scatter of ZeRO partitions vs one
# process), so they agree to rounding, not bit for bit. A summed log-prob of ~-186 nats has an fp32 spacing of
# 1.5e-5; the loss moves up to beta*(1+lambda) = 15x as much. Measured worst cases on this machine: log-prob
# 1.5e-5, loss 4.3e-5, weight 1.6e-6, update (w - w0) 6e-5 relative. The bounds leave ~10x headroom.
LOGP_ATOL, LOSS_ATOL, WEIGHT_ATOL, UPDATE_RTOL = 1e-4, 5e-4, 1e-5, 1e-3
PORTS = {name: 29610 + i for i, name in enumerate(DPOP_RECIPES)}


def _ds_file(name: str) -> str:
    return R.load_recipe(RECIPES_DIR / name)["deepspeed"]


def test_the_rehearsed_recipes_cover_every_deepspeed_config():
    used = {_ds_file(name) for name in DPOP_RECIPES}
    assert used == {R.rel(p) for p in (RECIPES_DIR / "deepspeed").glob("*.json")}
    # one single-process baseline serves all three: they share the settings taken from the recipe
    settings = {json.dumps({k: R.load_recipe(RECIPES_DIR / n).get(k) for k in FROM_RECIPE}) for n in DPOP_RECIPES}
    assert len(settings) == 1


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_cpu_variant_changes_only_what_a_cpu_needs():
    for name in DPOP_RECIPES:
        committed = _flat(json.loads((REPO_ROOT / _ds_file(name)).read_text()))
        variant = _flat(cpu_variant(REPO_ROOT / _ds_file(name)))
        assert variant.keys() == committed.keys()
        changed = {key for key in variant if variant[key] != committed[key]}
        assert changed == set(_flat(CPU_CHANGES)) == {"bf16.enabled"}


def _config(recipe_name, model_dir, pairs, out, micro, **extra):
    recipe = R.load_recipe(RECIPES_DIR / recipe_name)
    settings = {k: recipe[k] for k in FROM_RECIPE if k in recipe}
    # A 3-step run cannot use the recipe's 50-step warmup and cosine decay over 1000 steps.
    return tiny_config(model_dir, pairs, out, micro_batch_size=micro, gradient_accumulation_steps=GRAD_ACC,
                       max_steps=STEPS, save_steps=STEPS, lr_scheduler="constant", warmup_steps=0, **settings, **extra)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("ds-data") / "pairs.jsonl")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, pairs):
    """The reference run: one process, no DeepSpeed, micro batch 2 x grad-accum 2 = the same 4 pairs a step."""
    work = tmp_path_factory.mktemp("one-process")
    cfg = _config(DPOP_RECIPES[0], tiny_model_dir, pairs, work / "out", micro=MICRO * RANKS)
    assert_ok(run_axolotl_train(cfg, work))
    return work / "out"


@pytest.fixture(scope="module", params=DPOP_RECIPES)
def zero3(request, tmp_path_factory, tiny_model_dir, pairs):
    """Two gloo ranks under `accelerate launch --use_deepspeed` with the recipe's ZeRO config (CPU variant)."""
    name = request.param
    work = tmp_path_factory.mktemp(name.removesuffix(".yml"))
    ds_json = work / "deepspeed.json"
    ds_json.write_text(json.dumps(cpu_variant(REPO_ROOT / _ds_file(name))))
    cfg = _config(name, tiny_model_dir, pairs, work / "out", micro=MICRO, deepspeed=str(ds_json),
                  plugins=["axolotl_dpop.DPOPPlugin", PLUGIN])
    launcher = ["--", "--use_deepspeed", "--num_processes", str(RANKS), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(PORTS[name])]
    env = {"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)}  # the test plugin lives in tests/
    proc = run_axolotl_train(cfg, work, launcher_args=launcher, env=env)
    assert_ok(proc)
    reports = [json.loads((work / "out" / REPORT.format(rank=r)).read_text()) for r in range(RANKS)]
    return name, work / "out", reports


@pytest.mark.slow
def test_two_ranks_run_the_recipes_zero3_engine(zero3):
    name, _, reports = zero3
    zero = json.loads((REPO_ROOT / _ds_file(name)).read_text())["zero_optimization"]
    want_opt = (zero.get("offload_optimizer") or {}).get("device")
    want_param = (zero.get("offload_param") or {}).get("device")
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world_size"] == RANKS and report["backend"] == "gloo"
        # policy and the separate frozen reference model are both ZeRO-3 engines (TRL shards the reference too)
        assert report["policy_engine"] == report["reference_engine"] == "DeepSpeedEngine"
        assert report["zero_stage"] == report["reference_zero_stage"] == 3
        assert report["offload_optimizer"] == want_opt and report["offload_param"] == want_param
        assert report["reference_offload_param"] == want_param
        assert report["optimizer"][0] == "DeepSpeedZeroOptimizer_Stage3"
        # with optimizer offload accelerate swaps the recipe's AdamW for DeepSpeed's C++ CPU Adam, as on GPUs
        assert report["optimizer"][1] == ("DeepSpeedCPUAdam" if want_opt == "cpu" else "AdamW")
        assert (report["train_batch_size"], report["micro_batch_per_rank"], report["gradient_accumulation_steps"]) \
            == (RANKS * MICRO * GRAD_ACC, MICRO, GRAD_ACC)
        for key in ("policy_params", "reference_params"):
            local, full = report[key]
            assert local < 0.6 * full, f"rank {rank} holds {local} of {full} {key}: not partitioned"
    for key in ("policy_params", "reference_params"):
        assert sum(r[key][0] for r in reports) >= reports[0][key][1], "the partitions cover the model"


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def _assert_matches_one_process(out, one_process, base_dir, what):
    ds_logs, ref_logs = log_history(out), log_history(one_process)
    assert len(ds_logs) == len(ref_logs) == STEPS
    tolerance = {"loss": LOSS_ATOL, "logps/chosen": LOGP_ATOL, "logps/rejected": LOGP_ATOL,
                 "rewards/margins": LOGP_ATOL, "dpop/penalty": LOGP_ATOL}
    for key, atol in tolerance.items():
        assert [e[key] for e in ds_logs] == pytest.approx([e[key] for e in ref_logs], rel=0, abs=atol), key
    assert any(e["dpop/penalty"] > 0 for e in ref_logs), "the DPOP penalty was active in some step"
    assert ds_logs[-1]["loss"] != ds_logs[0]["loss"]

    trained, reference, base = _weights(out), _weights(one_process), _weights(base_dir)
    assert trained.keys() == reference.keys()
    worst = max((trained[k] - reference[k]).abs().max().item() for k in reference)
    assert worst <= WEIGHT_ATOL, f"{what}: final weights differ from one process by up to {worst:.2e}"
    # the update each run made (w - w0) agrees as a whole, not just within an absolute bound
    update = torch.cat([(reference[k] - base[k]).flatten() for k in reference])
    gap = torch.cat([(trained[k] - reference[k]).flatten() for k in reference])
    assert update.norm() > 0 and gap.norm() <= UPDATE_RTOL * update.norm()


@pytest.mark.slow
def test_zero3_losses_and_weights_match_one_process(zero3, one_process, tiny_model_dir):
    name, out, _ = zero3
    _assert_matches_one_process(out, one_process, tiny_model_dir, name)


@pytest.mark.slow
def test_two_nodes_started_with_the_chains_arguments(tmp_path_factory, tiny_model_dir, pairs, one_process):
    """Two "nodes" on this machine, one process each, each started with exactly the command the stage chain runs
    on node 0 and node 1 of a 2-node job (accelerate's per-node DeepSpeed launcher, rendezvous on 127.0.0.1)."""
    name = DPOP_RECIPES[0]
    work = tmp_path_factory.mktemp("two-nodes")
    ds_json = work / "deepspeed.json"
    ds_json.write_text(json.dumps(cpu_variant(REPO_ROOT / _ds_file(name))))
    cfg = _config(name, tiny_model_dir, pairs, work / "out", micro=MICRO, deepspeed=str(ds_json),
                  plugins=["axolotl_dpop.DPOPPlugin", PLUGIN])
    config = write_config(cfg, work)
    stage = C.Stage(0, RECIPES_DIR / name, cfg, work / "out", config, rebased=True)
    commands = [C.train_command(stage, C.Launch(num_gpus=1, nnodes=2, node_rank=node, master_addr="127.0.0.1",
                                                master_port=29619), "cuda") for node in (0, 1)]
    assert [cmd[cmd.index("--machine_rank") + 1] for cmd in commands] == ["0", "1"]
    assert commands[0][-3:] == commands[1][-3:] == ["--use_deepspeed", "--deepspeed_multinode_launcher", "standard"]
    env = axolotl_env({"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)})
    logs = [work / f"node{node}.log" for node in (0, 1)]  # files, not pipes: an unread pipe would stall a rank
    nodes = [subprocess.Popen(cmd, cwd=work, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True) for cmd, log in zip(commands, logs)]
    try:
        for node in nodes:
            node.wait(timeout=600)
    finally:
        for node in nodes:
            if node.poll() is None:  # a rank that waits for a dead peer: stop its whole process group
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log.read_text()[-6000:]
    reports = [json.loads((work / "out" / REPORT.format(rank=r)).read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["zero_stage"]) for r in reports] == [(0, 2, 3), (1, 2, 3)]
    _assert_matches_one_process(work / "out", one_process, tiny_model_dir, "two nodes")
