"""The stage chain behind `make smaug-34b`: plan, dry run, preflight, skip-done, resume-killed, and the CPU twin
run end to end through the real `axolotl train`."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from smaug import chain as C
from smaug import memory
from smaug.cli import main as smaug_main
from smaug.errors import UserError
from smaug.paths import RECIPES_DIR, REPO_ROOT

NO_GPU = ([], "no CUDA device (test)")


def _section(text: str, header: str) -> str:
    """The dry-run lines of one stage."""
    start = text.index(header)
    end = text.find("\nstage ", start + 1)
    return text[start: end if end > 0 else None]


def test_every_chain_plans_and_each_stage_feeds_the_next():
    for name in C.load_chains():
        plan = C.plan_chain(name)
        assert plan.stages and plan.hardware.get("accelerator") in {"cuda", "cpu"}
    for name in ("smaug-34b", "tiny"):
        sft, dpop = C.plan_chain(name).stages
        assert C._absolute(dpop.recipe["base_model"]) == sft.output_dir
        assert dpop.recipe["rl"] == "dpop" and "rl" not in sft.recipe
    assert [s.name for s in C.plan_chain("smaug-72b").stages] == ["recipes/smaug72b_dpop.yml"]


def test_dry_run_prints_stages_commands_and_memory(capsys):
    assert C.run_chain("smaug-34b", dry_run=True, env={}) == 0
    out = capsys.readouterr().out
    assert out.index("stage 1/2: recipes/smaug34b_sft.yml") < out.index("stage 2/2: recipes/smaug34b_dpop.yml")
    sft, dpop = _section(out, "stage 1/2"), _section(out, "stage 2/2")
    for part, recipe in ((sft, "smaug34b_sft.yml"), (dpop, "smaug34b_dpop.yml")):
        # a DeepSpeed recipe goes through accelerate's DeepSpeed launcher (--multi_gpu would wrap ZeRO-3 in DDP)
        assert (f"command: AXOLOTL_DO_NOT_TRACK=1 axolotl train recipes/{recipe} --launcher accelerate -- "
                "--num_processes 8 --num_machines 1 --machine_rank 0 --main_process_ip 127.0.0.1 "
                "--main_process_port 29500 --use_deepspeed\n") in part
    # the estimate reads the recipe's DeepSpeed json (ZeRO-3, optimizer offloaded) and the model table
    weights = 34.39e9 * 2 / 8 / memory.GIB
    assert re.search(rf"weights, bf16 \(2 B/param\)\s+{weights:.1f} GiB", sft)
    assert re.search(r"AdamW states.*-> CPU\s+0\.0 GiB", sft)
    assert "frozen reference model" in dpop and "frozen reference model" not in sft
    assert "ZeRO stage 3" in dpop and "34.39B parameters" in dpop
    assert "rl_beta=0.3, dpop_lambda=50, learning_rate=5e-05" in dpop


def test_dry_run_passes_multi_node_variables_to_accelerate(capsys):
    env = {"NUM_GPUS": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "6000"}
    assert C.run_chain("smaug-72b", dry_run=True, env=env) == 0
    out = capsys.readouterr().out
    assert ("--num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip 10.1.2.3 "
            "--main_process_port 6000 --use_deepspeed --deepspeed_multinode_launcher standard") in out
    assert "world size 16" in out and "weights, bf16 (2 B/param) -> CPU" in out


@pytest.mark.parametrize("env", [{"NODE_RANK": "2", "NNODES": "2"}, {"NUM_GPUS": "eight"}, {"NNODES": "0"}])
def test_bad_launch_variables_are_user_errors(env):
    with pytest.raises(UserError, match="NODE_RANK|NUM_GPUS|NNODES"):
        C.Launch.from_env({"accelerator": "cuda", "gpus": 8}, env)


def test_memory_estimate_follows_zero_stage_and_adapter():
    shape = memory.KNOWN_MODELS["mistralai/Mistral-7B-v0.1"]
    recipe = yaml.safe_load((RECIPES_DIR / "mistral7b_metamath_dpo.yml").read_text())
    rows = dict(memory.estimate(recipe, shape, 8, 8, REPO_ROOT).rows)
    assert rows["AdamW states, fp32 master + m + v (12 B/param)"] == pytest.approx(12 * shape.params / 8 / memory.GIB)
    assert rows["frozen reference model, bf16"] == pytest.approx(2 * shape.params / 8 / memory.GIB)
    on_four = dict(memory.estimate(recipe, shape, 4, 4, REPO_ROOT).rows)
    assert on_four["gradients, bf16 (2 B/param)"] == pytest.approx(2 * rows["gradients, bf16 (2 B/param)"])

    qlora = yaml.safe_load((RECIPES_DIR / "smaug72b_dpop_qlora.yml").read_text())
    big = memory.KNOWN_MODELS["moreh/MoMo-72B-lora-1.8.7-DPO"]
    est = memory.estimate(qlora, big, 1, 1, REPO_ROOT)
    assert dict(est.rows)["frozen base weights (4-bit)"] == pytest.approx(0.55 * big.params / memory.GIB)
    assert not any("reference" in what for what, _ in est.rows)
    assert 45 < est.total_gib < 80, "the QLoRA recipe claims one 80 GB GPU"


def test_shape_from_local_config_counts_parameters(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    shape = memory.model_shape(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert shape.params == sum(p.numel() for p in model.parameters())


def test_preflight_without_gpus_stops_with_what_to_run_instead():
    plan = C.plan_chain("smaug-34b")
    launch = C.Launch.from_env(plan.hardware, {})
    with pytest.raises(UserError) as err:
        C.preflight(plan, launch, NO_GPU)
    message = str(err.value)
    assert "8x H100 80 GB" in message and "no CUDA device" in message
    assert "DRY_RUN=1 make smaug-34b" in message and "make smaug-tiny" in message
    C.preflight(plan, launch, ([79.1] * 8, "8 CUDA device(s): NVIDIA H100 80GB HBM3"))  # passes
    with pytest.raises(UserError, match="found 40 GiB"):
        C.preflight(plan, launch, ([40.0] * 8, "8 CUDA device(s): NVIDIA A100-SXM4-40GB"))
    with pytest.raises(UserError, match="sized for 8 GPUs in total but NUM_GPUS x NNODES = 4 x 1 = 4"):
        C.preflight(plan, C.Launch.from_env(plan.hardware, {"NUM_GPUS": "4"}), ([79.1] * 4, "4 GPUs"))


def test_cli_stops_in_seconds_on_a_machine_without_gpus(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(C, "detect_gpus", lambda: NO_GPU)
    for name in ("DRY_RUN", "SMAUG_SKIP_PREFLIGHT", "NUM_GPUS", "NNODES"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    code = smaug_main(["chain", "run", "smaug-34b", "--output-root", str(tmp_path)])
    assert code == 2 and time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "chain smaug-34b needs" in err and "DRY_RUN=1 make smaug-34b" in err
    assert not any(tmp_path.iterdir()), "nothing written before the preflight"


def test_make_dry_run_variable_selects_the_dry_run(monkeypatch, capsys):
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.setattr(C, "detect_gpus", lambda: pytest.fail("a dry run must not look for GPUs"))
    assert smaug_main(["chain", "run", "smaug-34b"]) == 0
    assert "stage 2/2: recipes/smaug34b_dpop.yml" in capsys.readouterr().out


def _mark_done(stage, digest=None):
    stage.output_dir.mkdir(parents=True, exist_ok=True)
    stage.marker.write_text(json.dumps({"recipe": stage.name, "sha256": digest or stage.digest}))


def test_done_stages_are_skipped_without_starting_anything(tmp_path, capsys):
    plan = C.plan_chain("tiny", tmp_path)
    for stage in plan.stages:
        _mark_done(stage)
    assert C.run_chain("tiny", tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 2
    assert not any(stage.output_dir.joinpath(C.STAGE_LOG).exists() for stage in plan.stages)
    assert not (tmp_path / "tiny" / "base-model").exists(), "not even the prepare step ran"


def test_a_stage_done_with_another_recipe_version_stops(tmp_path):
    stage = C.plan_chain("tiny", tmp_path).stages[0]
    _mark_done(stage, digest="0" * 64)
    assert C.stage_status(stage) == "stale"
    with pytest.raises(UserError, match="different version of recipes/cpu/tiny_sft.yml"):
        C.run_chain("tiny", tmp_path)


def test_half_written_checkpoints_are_set_aside(tmp_path):
    good, half = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    good.mkdir()
    (good / "trainer_state.json").write_text("{}")
    half.mkdir()
    moved = C.set_aside_incomplete_checkpoints(tmp_path)
    assert [p.name for p in moved] == ["incomplete-checkpoint-4"]
    assert C.complete_checkpoints(tmp_path) == [good]


def test_output_root_rebases_every_output_path(tmp_path):
    sft, dpop = C.plan_chain("smaug-34b", tmp_path).stages
    assert sft.output_dir == tmp_path / "smaug34b-sft" and dpop.recipe["base_model"] == str(tmp_path / "smaug34b-sft")
    assert sft.recipe["base_model"] == "jondurbin/bagel-34b-v0.2"
    assert dpop.run_config == tmp_path / "smaug34b-dpop" / C.RESOLVED_CONFIG
    default_sft, _ = C.plan_chain("smaug-34b").stages
    assert default_sft.run_config == RECIPES_DIR / "smaug34b_sft.yml" and not default_sft.rebased


def test_lora_stage_is_merged_before_the_next_stage(tmp_path, capsys):
    base = yaml.safe_load((RECIPES_DIR / "cpu" / "tiny_sft.yml").read_text())
    lora = {**base, "adapter": "lora", "lora_r": 4, "lora_target_linear": True, "output_dir": "./outputs/t/lora"}
    (tmp_path / "lora.yml").write_text(yaml.safe_dump(lora))
    for target, ok in (("./outputs/t/lora", False), ("./outputs/t/lora/merged", True)):
        nxt = {**base, "base_model": target, "output_dir": "./outputs/t/next"}
        (tmp_path / "next.yml").write_text(yaml.safe_dump(nxt))
        chains = tmp_path / "chains.yaml"
        chains.write_text(yaml.safe_dump({"t": {"hardware": {"accelerator": "cpu"},
                                               "stages": [str(tmp_path / "lora.yml"), str(tmp_path / "next.yml")]}}))
        if not ok:
            with pytest.raises(UserError, match="merged"):
                C.plan_chain("t", chains_file=chains)
            continue
        plan = C.plan_chain("t", chains_file=chains)
        assert plan.stages[0].merge_lora and not plan.stages[1].merge_lora
        text = C.describe(plan, C.Launch.from_env(plan.hardware, {}))
        assert "then:    AXOLOTL_DO_NOT_TRACK=1 axolotl merge-lora" in text


def test_a_stage_that_is_not_resumable_is_rejected(tmp_path):
    recipe = yaml.safe_load((RECIPES_DIR / "cpu" / "tiny_sft.yml").read_text())
    recipe.pop("auto_resume_from_checkpoints")
    (tmp_path / "r.yml").write_text(yaml.safe_dump(recipe))
    chains = tmp_path / "chains.yaml"
    chains.write_text(yaml.safe_dump({"t": {"stages": [str(tmp_path / "r.yml")]}}))
    with pytest.raises(UserError, match="auto_resume_from_checkpoints: true"):
        C.plan_chain("t", chains_file=chains)


# ------------------------------------------------------------------------------------------------------------
# the CPU twin, end to end


def _children_running_axolotl() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)
            if any("axolotl" in part for part in p.cmdline())]


def _run_until_checkpoint_then_kill(root: Path, stage) -> int:
    """Run the chain in a thread; once `stage` has a complete checkpoint, SIGKILL the axolotl process (a crash
    or a pre-empted node). Returns the step of the last complete checkpoint."""
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", C.run_chain("tiny", root)))
    runner.start()
    deadline = time.monotonic() + 240
    while not C.complete_checkpoints(stage.output_dir):
        assert runner.is_alive() and time.monotonic() < deadline, f"no checkpoint appeared in {stage.output_dir}"
        time.sleep(0.2)
    for pid in _children_running_axolotl():
        os.kill(pid, signal.SIGKILL)
    runner.join(60)
    assert result["code"] != 0 and not stage.marker.is_file()
    step = int(C.complete_checkpoints(stage.output_dir)[-1].name.split("-")[-1])
    assert step < stage.recipe["max_steps"], "killed before the end"
    return step


def _resumed_correctly(stage, log_before: str, killed_at: int) -> None:
    """axolotl's log of the rerun says it resumed from that checkpoint, and only the remaining steps ran."""
    rerun_log = (stage.output_dir / C.STAGE_LOG).read_text()[len(log_before):]
    match = re.search(r"resume from checkpoint at (\S+)/checkpoint-(\d+)", rerun_log)
    assert match, f"axolotl did not auto-resume {stage.name}"
    assert Path(match.group(1)) == stage.output_dir and int(match.group(2)) == killed_at
    assert rerun_log.count("{'loss'") == stage.recipe["max_steps"] - killed_at
    final = C.complete_checkpoints(stage.output_dir)[-1]
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == stage.recipe["max_steps"]
    assert json.loads(stage.marker.read_text())["sha256"] == stage.digest


@pytest.mark.slow
def test_tiny_chain_resumes_killed_stages_and_skips_done_ones(tmp_path, capsys):
    root = tmp_path / "out"
    sft, dpop = C.plan_chain("tiny", root).stages

    # run 1: the SFT stage is killed after its first checkpoint
    sft_killed_at = _run_until_checkpoint_then_kill(root, sft)
    sft_log = (sft.output_dir / C.STAGE_LOG).read_text()
    capsys.readouterr()

    # run 2: SFT resumes and finishes; the DPOP stage starts from it and is killed after a checkpoint
    dpop_killed_at = _run_until_checkpoint_then_kill(root, dpop)
    assert f"stage 1/2 recipes/cpu/tiny_sft.yml: resuming from {sft.output_dir}/checkpoint-{sft_killed_at}" \
        in capsys.readouterr().out
    _resumed_correctly(sft, sft_log, sft_killed_at)
    dpop_log = (dpop.output_dir / C.STAGE_LOG).read_text()

    # run 3: SFT is skipped; DPOP resumes from its last checkpoint and finishes
    assert C.run_chain("tiny", root) == 0
    out = capsys.readouterr().out
    assert "stage 1/2 recipes/cpu/tiny_sft.yml: done, skipped" in out
    assert f"stage 2/2 recipes/cpu/tiny_dpop.yml: resuming from {dpop.output_dir}/checkpoint-{dpop_killed_at}" in out
    _resumed_correctly(dpop, dpop_log, dpop_killed_at)
    assert (dpop.output_dir / "model.safetensors").is_file()
    provenance = json.loads((dpop.output_dir / "smaug_provenance.json").read_text())
    assert provenance["training"]["dpop_lambda"] == 50 and provenance["training"]["rl_beta"] == 0.3
    assert provenance["parent"]["base_model"] == str(root / "tiny" / "base-model")
    assert provenance["recipe"] == "recipes/cpu/tiny_dpop.yml"
    # the lineage ends at the tiny model we created, so the final model gets a card with its licence
    from smaug.cards import render_card

    card = render_card(dpop.output_dir, auto_evals=False)
    assert card.data.license == "apache-2.0"

    # run 4: nothing to do, nothing started
    logs_before = [(s.output_dir / C.STAGE_LOG).read_text() for s in (sft, dpop)]
    started = time.monotonic()
    assert C.run_chain("tiny", root) == 0
    assert capsys.readouterr().out.count("done, skipped") == 2 and time.monotonic() - started < 5
    assert [(s.output_dir / C.STAGE_LOG).read_text() for s in (sft, dpop)] == logs_before


def test_launcher_flag_follows_the_recipes_deepspeed_setting():
    def command(chain, env):
        plan = C.plan_chain(chain)
        return C.train_command(plan.stages[0], C.Launch.from_env(plan.hardware, env), "cuda")

    qlora = command("smaug-72b-qlora", {"NUM_GPUS": "2"})  # no DeepSpeed: DDP over the GPUs
    assert qlora[-1] == "--multi_gpu" and "--use_deepspeed" not in qlora
    assert not {"--multi_gpu", "--use_deepspeed"} & set(command("smaug-72b", {"NUM_GPUS": "1"}))
    assert command("smaug-72b", {"NUM_GPUS": "8"})[-1] == "--use_deepspeed"
