"""DeepSpeed ZeRO-3 the way the Smaug recipes use it (plain, optimizer offload, full CPU offload), rehearsed on
two CPU processes (gloo) through the real `axolotl train` CLI: a full fine-tune with `rl: dpop` and a separate
frozen reference model, compared step by step with one process without DeepSpeed on the same global batch.
The ranks are started with the stage chain's own commands: one node with two processes, and (for plain ZeRO-3)
two "nodes" on this machine with one process each, each with its node's command.

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

from smaug.common.paths import RECIPES_DIR, REPO_ROOT
from smaug.training import chains as C, recipes as R
from smaug.training.chains.commands import train_command
from smaug.training.chains.plan import ChainStage
from tests.axolotl_runner import (
    assert_ok,
    axolotl_env,
    log_history,
    run_axolotl_train,
    tiny_config,
    write_config,
    write_pairs,
)
from tests.cpu_deepspeed import CPU_CHANGES, PLUGIN, REPORT, cpu_variant

# The full fine-tune DPOP recipes: between them they use every ZeRO config in recipes/deepspeed/.
DPOP_RECIPES = ["smaug7b_dpop.yml", "smaug34b_dpop.yml", "smaug72b_dpop.yml"]
FROM_RECIPE = (
    "rl",
    "rl_beta",
    "dpop_lambda",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
)
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
    return tiny_config(
        model_dir,
        pairs,
        out,
        micro_batch_size=micro,
        gradient_accumulation_steps=GRAD_ACC,
        max_steps=STEPS,
        save_steps=STEPS,
        lr_scheduler="constant",
        warmup_steps=0,
        **settings,
        **extra,
    )


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


# How the two ranks are started: by the stage chain's own command (`smaug.training.chains.commands.train_command`) for one node
# with two processes, or for two "nodes" on this machine with one process each (node 0 and node 1 commands).
LAUNCHES = {"smaug7b_dpop.yml": 2, "smaug34b_dpop.yml": 1, "smaug72b_dpop.yml": 1}  # recipe -> nodes


def _run_chain_commands(stage, nodes: int, port: int, work) -> None:
    launches = [
        C.Launch(num_gpus=RANKS // nodes, nnodes=nodes, node_rank=node, master_addr="127.0.0.1", master_port=port)
        for node in range(nodes)
    ]
    commands = [train_command(stage, launch, "cuda") for launch in launches]
    assert all(
        cmd[-3:] == ["--use_deepspeed", "--deepspeed_multinode_launcher", "standard"]
        if nodes > 1
        else cmd[-1] == "--use_deepspeed"
        for cmd in commands
    )
    env = axolotl_env({"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)})  # the test plugin lives in tests/
    logs = [work / f"node{node}.log" for node in range(nodes)]  # files, not pipes: an unread pipe stalls a rank
    procs = [
        subprocess.Popen(cmd, cwd=work, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        for cmd, log in zip(commands, logs)
    ]
    try:
        for proc in procs:
            proc.wait(timeout=600)
    finally:
        for proc in procs:
            if proc.poll() is None:  # a rank waiting for a dead peer: stop its whole process group
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log.read_text()[-6000:]


@pytest.fixture(scope="module", params=DPOP_RECIPES, ids=lambda n: f"{n}-{LAUNCHES[n]}node")
def zero3(request, tmp_path_factory, tiny_model_dir, pairs):
    """Two gloo ranks under accelerate's DeepSpeed launcher with the recipe's ZeRO config (CPU variant)."""
    name = request.param
    work = tmp_path_factory.mktemp(name.removesuffix(".yml"))
    ds_json = work / "deepspeed.json"
    ds_json.write_text(json.dumps(cpu_variant(REPO_ROOT / _ds_file(name))))
    cfg = _config(
        name,
        tiny_model_dir,
        pairs,
        work / "out",
        micro=MICRO,
        deepspeed=str(ds_json),
        plugins=["axolotl_dpop.DPOPPlugin", PLUGIN],
    )
    stage = ChainStage(0, RECIPES_DIR / name, cfg, work / "out", write_config(cfg, work), rebased=True)
    _run_chain_commands(stage, LAUNCHES[name], PORTS[name], work)
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
        assert (report["train_batch_size"], report["micro_batch_per_rank"], report["gradient_accumulation_steps"]) == (
            RANKS * MICRO * GRAD_ACC,
            MICRO,
            GRAD_ACC,
        )
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
    tolerance = {
        "loss": LOSS_ATOL,
        "logps/chosen": LOGP_ATOL,
        "logps/rejected": LOGP_ATOL,
        "rewards/margins": LOGP_ATOL,
        "dpop/penalty": LOGP_ATOL,
    }
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
