"""The stage chain behind `make smaug-34b`: plan, dry run, preflight, skip-done, resume-killed, and the CPU twin
run end to end through the real `axolotl train`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from smaug.cli import main as smaug_main
from smaug.common.errors import UserError
from smaug.common.paths import RECIPES_DIR, REPO_ROOT, repo_path
from smaug.training import chains as C, memory
from smaug.training.chains import inputs as I, preflight as P
from smaug.training.chains.commands import train_command
from smaug.training.chains.plan import RESOLVED_CONFIG, STAGE_LOG
from smaug.training.checkpoints import complete_checkpoints, set_aside_incomplete_checkpoints
from smaug.training.state import Kind

NO_GPU = ([], "no CUDA device (test)")


def _section(text: str, header: str) -> str:
    """The dry-run lines of one stage."""
    start = text.index(header)
    end = text.find("\nstage ", start + 1)
    return text[start : end if end > 0 else None]


def test_every_chain_plans_and_each_stage_feeds_the_next():
    for name in C.load_chains():
        plan = C.plan_chain(name)
        assert plan.stages and plan.hardware.get("accelerator") in {"cuda", "cpu"}
    for name in ("smaug-34b", "tiny"):
        sft, dpop = C.plan_chain(name).stages
        assert repo_path(dpop.recipe["base_model"]) == sft.output_dir
        assert dpop.recipe["rl"] == "dpop" and "rl" not in sft.recipe
    assert [s.name for s in C.plan_chain("smaug-72b").stages] == ["recipes/smaug72b_dpop.yml"]


def test_dry_run_prints_stages_commands_and_memory(capsys):
    assert C.run_chain("smaug-34b", dry_run=True, env={}) == 0
    out = capsys.readouterr().out
    assert out.index("stage 1/2: recipes/smaug34b_sft.yml") < out.index("stage 2/2: recipes/smaug34b_dpop.yml")
    sft, dpop = _section(out, "stage 1/2"), _section(out, "stage 2/2")
    for part, recipe in ((sft, "smaug34b_sft"), (dpop, "smaug34b_dpop")):
        # the recipe as committed, plus the chain's own axolotl keys (TensorBoard; a prepared-data folder per inputs)
        assert re.search(
            rf"command: AXOLOTL_DO_NOT_TRACK=1 axolotl train recipes/{recipe}.yml --use-tensorboard "
            rf"--dataset-prepared-path=outputs/prepared/{recipe.replace('_', '-')}/inputs-\w+ "
            "--launcher accelerate -- --num_processes 8 --num_machines 1 --machine_rank 0 "
            "--main_process_ip 127.0.0.1 --main_process_port 29500 --use_deepspeed\n",
            part,
        )
        # a DeepSpeed recipe goes through accelerate's DeepSpeed launcher (--multi_gpu would wrap ZeRO-3 in DDP)
    # the estimate reads the recipe's DeepSpeed json (ZeRO-3, optimizer offloaded) and the model table
    weights = 34.39e9 * 2 / 8 / memory.GIB
    assert re.search(rf"weights, bf16 \(2 B/param\)\s+{weights:.1f} GiB", sft)
    assert re.search(r"AdamW states.*-> CPU\s+0\.0 GiB", sft)
    # the DPOP stage precomputes its reference log-probs: no reference model in memory (the SFT has none either)
    assert (
        "no reference model (reference log-probs precomputed)" in dpop and "reference" not in sft.split("GPU memory")[1]
    )
    assert "ZeRO stage 3" in dpop and "34.39B parameters" in dpop
    assert "rl_beta=0.3, dpop_lambda=50, learning_rate=5e-05" in dpop


def test_dry_run_passes_multi_node_variables_to_accelerate(capsys):
    env = {"NUM_GPUS": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "6000"}
    assert C.run_chain("smaug-72b", dry_run=True, env=env) == 0
    out = capsys.readouterr().out
    assert (
        "--num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip 10.1.2.3 "
        "--main_process_port 6000 --use_deepspeed --deepspeed_multinode_launcher standard"
    ) in out
    # the 72B recipe offloads the optimizer, not the parameters (recipes/deepspeed/zero3_bf16_offload_optimizer.json)
    assert "world size 16" in out and "AdamW states, fp32 master + m + v (12 B/param) -> CPU" in out
    assert "weights, bf16 (2 B/param) -> CPU" not in out


@pytest.mark.parametrize("env", [{"NODE_RANK": "2", "NNODES": "2"}, {"NUM_GPUS": "eight"}, {"NNODES": "0"}])
def test_bad_launch_variables_are_user_errors(env):
    with pytest.raises(UserError, match="NODE_RANK|NUM_GPUS|NNODES"):
        C.Launch.from_env({"accelerator": "cuda", "gpus": 8}, env)


def test_memory_estimate_follows_zero_stage_and_adapter():
    shape = memory.KNOWN_MODELS["mistralai/Mistral-7B-v0.1"]
    recipe = yaml.safe_load((RECIPES_DIR / "generated" / "mistral7b_metamath_dpo.yml").read_text())
    rows = dict(memory.estimate(recipe, shape, 8, 8, REPO_ROOT).rows)
    assert rows["AdamW states, fp32 master + m + v (12 B/param)"] == pytest.approx(12 * shape.params / 8 / memory.GIB)
    assert rows["frozen reference model, bf16"] == pytest.approx(2 * shape.params / 8 / memory.GIB)
    on_four = dict(memory.estimate(recipe, shape, 4, 4, REPO_ROOT).rows)
    assert on_four["gradients, bf16 (2 B/param)"] == pytest.approx(2 * rows["gradients, bf16 (2 B/param)"])
    # the plugin's rl: slic has no reference model, but still puts chosen and rejected through the model
    slic = dict(memory.estimate({**recipe, "rl": "slic"}, shape, 8, 8, REPO_ROOT).rows)
    assert "frozen reference model, bf16" not in slic and slic["no reference model (rl: slic has none)"] == 0.0
    assert {k: v for k, v in rows.items() if k != "frozen reference model, bf16"} == {
        k: v for k, v in slic.items() if not k.startswith("no reference model")
    }

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
        P.preflight(plan, launch, NO_GPU)
    message = str(err.value)
    assert "8x H100 80 GB" in message and "no CUDA device" in message
    assert "DRY_RUN=1 make smaug-34b" in message and "make smaug-tiny" in message
    P.preflight(plan, launch, ([79.1] * 8, "8 CUDA device(s): NVIDIA H100 80GB HBM3"))  # passes
    with pytest.raises(UserError, match="found 40 GiB"):
        P.preflight(plan, launch, ([40.0] * 8, "8 CUDA device(s): NVIDIA A100-SXM4-40GB"))
    with pytest.raises(UserError, match="sized for 8 GPUs in total but NUM_GPUS x NNODES = 4 x 1 = 4"):
        P.preflight(plan, C.Launch.from_env(plan.hardware, {"NUM_GPUS": "4"}), ([79.1] * 4, "4 GPUs"))


def test_cli_stops_in_seconds_on_a_machine_without_gpus(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(P, "detect_gpus", lambda: NO_GPU)
    for name in ("DRY_RUN", "SMAUG_SKIP_PREFLIGHT", "NUM_GPUS", "NNODES"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    code = smaug_main(["chain", "run", "smaug-34b", "--output-root", str(tmp_path)])
    assert code == 2 and time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "chain smaug-34b needs" in err and "DRY_RUN=1 make smaug-34b" in err
    assert not any(tmp_path.iterdir()), "nothing written before the preflight"


def test_make_dry_run_variable_selects_the_dry_run(monkeypatch, capsys):
    # Make turns DRY_RUN=1 into the flag (as for `make publish`), and the flag makes a plan without GPUs.
    made = subprocess.run(
        ["make", "-n", "smaug-34b", "DRY_RUN=1", "SMAUG_SKIP_PREFLIGHT=1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "smaug chain run smaug-34b --dry-run --skip-preflight" in made
    monkeypatch.setattr(P, "detect_gpus", lambda: pytest.fail("a dry run must not look for GPUs"))
    assert smaug_main(["chain", "run", "smaug-34b", "--dry-run"]) == 0
    assert "stage 2/2: recipes/smaug34b_dpop.yml" in capsys.readouterr().out


def write_weights(folder: Path, adapter: bool = False) -> None:
    """A whole (tiny) safetensors model file, its config.json and tokenizer config (a LoRA adapter's with
    ``adapter``), as save_pretrained leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    prefix = "adapter_" if adapter else ""
    (folder / f"{prefix}model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    (folder / f"{prefix}config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")


def finish(chain, stage, earlier: list, run_id: str | None = None, digest: str | None = None):
    """Leave what a finished run of the stage leaves: final weights and a done-marker with what it consumed (the
    recipe's hash replaced by ``digest`` when given)."""
    write_weights(stage.output_dir)
    record = I.new_record(chain, stage, earlier)
    record.run_id, record.sha256 = run_id or record.run_id, digest or record.sha256
    record.write(stage.output_dir, done=True)
    return I.assess_stage(chain, stage, earlier)


def test_done_stages_are_skipped_without_starting_anything(tmp_path, capsys):
    plan = C.plan_chain("tiny", tmp_path)
    finish(plan, plan.stages[1], [finish(plan, plan.stages[0], [])])
    assert C.run_chain("tiny", tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 2
    assert not any(stage.output_dir.joinpath(STAGE_LOG).exists() for stage in plan.stages)
    assert not (tmp_path / "tiny" / "base-model").exists(), "not even the prepare step ran"


def test_a_stage_done_with_another_recipe_version_stops(tmp_path):
    plan = C.plan_chain("tiny", tmp_path)
    stage = plan.stages[0]
    assert finish(plan, stage, [], digest="0" * 64).kind is Kind.STALE
    with pytest.raises(UserError, match=r"tiny_sft.yml .* is stale: the recipe changed.*to retrain it: mv "):
        C.run_chain("tiny", tmp_path)


def test_half_written_checkpoints_are_set_aside(tmp_path):
    good, half, torn = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4", tmp_path / "checkpoint-6"
    good.mkdir()
    (good / "trainer_state.json").write_text('{"global_step": 2, "max_steps": 8}')
    half.mkdir()
    torn.mkdir()
    (torn / "trainer_state.json").write_text('{"global_step": 6, "max_st')  # killed while writing it
    moved = set_aside_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in moved) == ["incomplete-checkpoint-4", "incomplete-checkpoint-6"]
    assert complete_checkpoints(tmp_path) == [good]


def test_output_root_rebases_every_output_path(tmp_path):
    sft, dpop = C.plan_chain("smaug-34b", tmp_path).stages
    assert sft.output_dir == tmp_path / "smaug34b-sft" and dpop.recipe["base_model"] == str(tmp_path / "smaug34b-sft")
    assert sft.recipe["base_model"] == "jondurbin/bagel-34b-v0.2"
    assert dpop.run_config == tmp_path / "smaug34b-dpop" / RESOLVED_CONFIG
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
        chains.write_text(
            yaml.safe_dump(
                {
                    "t": {
                        "hardware": {"accelerator": "cpu"},
                        "stages": [str(tmp_path / "lora.yml"), str(tmp_path / "next.yml")],
                    }
                }
            )
        )
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
# the CPU twin, end to end: one chain run through kills, shared by the tests below


def _children_running_axolotl() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True) if any("axolotl" in part for part in p.cmdline())]


def _kill_axolotl() -> None:
    for pid in _children_running_axolotl():
        os.kill(pid, signal.SIGKILL)


class _Output(io.StringIO):
    """What a chain run prints (axolotl's output included, line by line); ``kill_on`` SIGKILLs axolotl the moment
    a line containing it is echoed, before the process can go on."""

    def __init__(self, kill_on: str | None = None):
        super().__init__()
        self.kill_on = kill_on

    def write(self, text: str) -> int:
        if self.kill_on and self.kill_on in text:
            _kill_axolotl()
            self.kill_on = None
        return super().write(text)


def _run(root: Path, env: dict | None = None, kill_on: str | None = None, kill_when=None) -> tuple[int, str]:
    """Run the tiny chain in a thread; kill axolotl when a line with ``kill_on`` is printed, or once
    ``kill_when()`` is true (polled). Returns (exit code, what it printed)."""
    out, result = _Output(kill_on), {}

    def target():
        with contextlib.redirect_stdout(out):
            try:
                result["code"] = C.run_chain("tiny", root, env=env or {})
            except BaseException as err:  # noqa: BLE001 - reported below
                result["error"] = err

    runner = threading.Thread(target=target)
    runner.start()
    deadline = time.monotonic() + 300
    while kill_when is not None and not kill_when():
        assert runner.is_alive() and time.monotonic() < deadline, f"never ready to kill:\n{out.getvalue()[-3000:]}"
        time.sleep(0.2)
    if kill_when is not None:
        _kill_axolotl()
    runner.join(300)
    assert "error" not in result, result.get("error")
    return result["code"], out.getvalue()


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def _log_after(stage, offset: int) -> str:
    return (stage.output_dir / STAGE_LOG).read_text()[offset:]


def _log_size(stage) -> int:
    return len((stage.output_dir / STAGE_LOG).read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny chain: (1) SFT killed after its first checkpoint; (2) SFT resumes, finishes, and is killed right
    after axolotl's "Model successfully saved", before the done-marker; (3) SFT is finished without training,
    DPOP is killed after its first checkpoint, and `smaug chain status` shows the mixed state; (4) DPOP resumes
    and finishes, with TensorBoard (default) and W&B offline; (5) nothing is left to do."""
    root = tmp_path_factory.mktemp("tiny-chain") / "out"
    sft, dpop = C.plan_chain("tiny", root).stages
    seen: dict = {"root": root, "sft": sft, "dpop": dpop}

    code, _ = _run(root, kill_when=lambda: complete_checkpoints(sft.output_dir))
    seen["sft_killed_at"] = _step(complete_checkpoints(sft.output_dir)[-1])
    assert code != 0 and not sft.marker.exists() and seen["sft_killed_at"] < sft.recipe["max_steps"]
    seen["sft_offset"] = _log_size(sft)

    seen["run2_code"], seen["run2"] = _run(root, kill_on="Model successfully saved")
    seen["sft_weights"] = (sft.output_dir / "model.safetensors").read_bytes()
    seen["sft_log_after_kill"] = _log_size(sft)
    seen["status_finished"] = C.status_report(C.plan_chain("tiny", root))

    code, seen["run3"] = _run(root, kill_when=lambda: complete_checkpoints(dpop.output_dir))
    seen["dpop_killed_at"] = _step(complete_checkpoints(dpop.output_dir)[-1])
    assert code != 0 and not dpop.marker.exists() and seen["dpop_killed_at"] < dpop.recipe["max_steps"]
    seen["sft_log_after_run3"] = _log_size(sft)
    seen["dpop_offset"] = _log_size(dpop)
    started = time.perf_counter()
    seen["status_mixed"] = C.status_report(C.plan_chain("tiny", root))
    seen["status_seconds"] = time.perf_counter() - started

    wandb = {"WANDB_PROJECT": "smaug-tiny-test", "WANDB_MODE": "offline"}
    seen["run4_code"], seen["run4"] = _run(root, env=wandb)
    seen["logs_before_run5"] = [(s.output_dir / STAGE_LOG).read_text() for s in (sft, dpop)]
    started = time.monotonic()
    seen["run5_code"], seen["run5"] = _run(root, env={"WANDB_PROJECT": "another", "SMAUG_TENSORBOARD": "0"})
    seen["run5_seconds"] = time.monotonic() - started
    return seen


def _resumed_correctly(stage, rerun_log: str, killed_at: int) -> None:
    """axolotl's log of the rerun says it resumed from that checkpoint, and only the remaining steps ran."""
    match = re.search(r"resume from checkpoint at (\S+)/checkpoint-(\d+)", rerun_log)
    assert match, f"axolotl did not auto-resume {stage.name}"
    assert Path(match.group(1)) == stage.output_dir and int(match.group(2)) == killed_at
    assert rerun_log.count("{'loss'") == stage.recipe["max_steps"] - killed_at
    final = complete_checkpoints(stage.output_dir)[-1]
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == stage.recipe["max_steps"]


@pytest.mark.slow
def test_a_killed_stage_resumes_from_its_last_checkpoint(tiny_run):
    sft, dpop = tiny_run["sft"], tiny_run["dpop"]
    assert (
        f"stage 1/2 recipes/cpu/tiny_sft.yml: resuming from {sft.output_dir}/checkpoint-{tiny_run['sft_killed_at']}"
        in tiny_run["run2"]
    )
    run2_log = (sft.output_dir / STAGE_LOG).read_text()[tiny_run["sft_offset"] : tiny_run["sft_log_after_kill"]]
    _resumed_correctly(sft, run2_log, tiny_run["sft_killed_at"])
    assert f"stage 2/2 recipes/cpu/tiny_dpop.yml: resuming from {dpop.output_dir}/checkpoint-" in tiny_run["run4"]
    _resumed_correctly(dpop, _log_after(dpop, tiny_run["dpop_offset"]), tiny_run["dpop_killed_at"])
    assert tiny_run["run4_code"] == 0
    for stage in (sft, dpop):
        assert json.loads(stage.marker.read_text())["sha256"] == stage.digest
    assert (dpop.output_dir / "model.safetensors").is_file()
    provenance = json.loads((dpop.output_dir / "smaug_provenance.json").read_text())
    assert provenance["training"]["dpop_lambda"] == 50 and provenance["training"]["rl_beta"] == 0.3
    assert provenance["parent"]["base_model"] == str(tiny_run["root"] / "tiny" / "base-model")
    assert provenance["recipe"] == "recipes/cpu/tiny_dpop.yml"
    # the lineage ends at the tiny model we created, so the final model gets a card with its licence
    from smaug.release.cards import render_card

    assert render_card(dpop.output_dir, auto_evals=False).data.license == "apache-2.0"


@pytest.mark.slow
def test_a_run_killed_after_its_last_checkpoint_is_finished_without_training_again(tiny_run):
    """Issue 16.4: killed after "Model successfully saved", before the done-marker; the rerun used to resume and
    train step max_steps+1 over the finished model."""
    sft = tiny_run["sft"]
    assert tiny_run["run2_code"] != 0 and "Model successfully saved" in tiny_run["run2"]
    assert "finished at checkpoint-6 but not marked done (final weights complete)" in tiny_run["status_finished"]
    assert "next run: finish without training: write the done-marker" in tiny_run["status_finished"]
    assert (
        "stage 1/2 recipes/cpu/tiny_sft.yml: training had finished at checkpoint-6; marked done without training"
    ) in tiny_run["run3"]
    assert tiny_run["sft_log_after_run3"] == tiny_run["sft_log_after_kill"], "axolotl was not started for SFT"
    assert (sft.output_dir / "model.safetensors").read_bytes() == tiny_run["sft_weights"]
    assert [_step(c) for c in complete_checkpoints(sft.output_dir)][-1] == 6
    assert not (sft.output_dir / "checkpoint-7").exists()
    marker = json.loads(sft.marker.read_text())
    inputs = json.loads((sft.output_dir / ".smaug_stage_inputs").read_text())
    assert marker["run_id"] == inputs["run_id"] and marker["inputs"] == inputs["inputs"]


@pytest.mark.slow
def test_status_of_the_tiny_chain_with_one_stage_done_and_one_resumable(tiny_run):
    text, dpop = tiny_run["status_mixed"], tiny_run["dpop"]
    step = tiny_run["dpop_killed_at"]
    print(text)
    assert "stage 1/2 recipes/cpu/tiny_sft.yml: done\n" in text and "  next run: skip (done)" in text
    assert f"stage 2/2 recipes/cpu/tiny_dpop.yml: resumable from checkpoint-{step}\n  output: {dpop.output_dir}" in text
    state = json.loads((dpop.output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    loss = [e for e in state["log_history"] if "loss" in e][-1]
    assert f"  last logged: step {loss['step']} of 8, loss {loss['loss']:.4f} (checkpoint-{step})" in text
    assert f"  next run: resume from checkpoint-{step} (step {step} of 8)" in text
    assert tiny_run["status_seconds"] < 5


@pytest.mark.slow
def test_done_stages_are_skipped_whatever_the_tracking(tiny_run):
    assert tiny_run["run5_code"] == 0 and tiny_run["run5"].count("done, skipped") == 2
    assert tiny_run["run5_seconds"] < 5
    assert [(s.output_dir / STAGE_LOG).read_text() for s in (tiny_run["sft"], tiny_run["dpop"])] == tiny_run[
        "logs_before_run5"
    ]


def _tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value over every event file under ``folder`` (a resumed run writes a second one; the
    latest value of a step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, tuple[float, float]]] = {}
    for events in sorted(folder.glob("runs/*/events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                old = scalars.setdefault(tag, {}).get(event.step)
                if old is None or event.wall_time >= old[0]:
                    scalars[tag][event.step] = (event.wall_time, event.value)
    return {tag: {step: value for step, (_, value) in steps.items()} for tag, steps in scalars.items()}


def _logged(stage) -> list[dict]:
    state = json.loads((complete_checkpoints(stage.output_dir)[-1] / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_every_stage_logs_to_tensorboard_under_its_folder_with_the_trainers_values(tiny_run):
    """Issue 14.1: on by default through axolotl's `use_tensorboard` (the recipes do not set it); the event
    files under <output_dir>/runs/ hold every value of trainer_state.json's log_history, DPOP's under
    train/dpop/... and train/logps/..."""
    for recipe in ("tiny_sft.yml", "tiny_dpop.yml"):
        assert "use_tensorboard" not in yaml.safe_load((RECIPES_DIR / "cpu" / recipe).read_text())
    for stage in (tiny_run["sft"], tiny_run["dpop"]):
        scalars = _tensorboard_scalars(stage.output_dir)
        logged = _logged(stage)
        assert [e["step"] for e in logged] == list(range(1, stage.recipe["max_steps"] + 1))
        for entry in logged:
            for key, value in entry.items():
                if key in ("step", "epoch"):
                    continue
                assert scalars[f"train/{key}"][entry["step"]] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    dpop_tags = set(_tensorboard_scalars(tiny_run["dpop"].output_dir))
    assert {
        "train/dpop/penalty",
        "train/dpop/active_fraction",
        "train/logps/chosen",
        "train/logps/rejected",
        "train/rewards/margins",
        "train/loss",
    } <= dpop_tags


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline W&B run file: a LevelDB-format log of `Record` protobufs (7-byte file
    header; 32 KiB blocks; records split into FULL/FIRST/MIDDLE/LAST chunks with 7-byte headers)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos = run_file.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, chunks = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            records.append(chunks)
            chunks = b""
    rows = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


@pytest.mark.slow
def test_wandb_offline_gets_the_same_values_when_asked_for(tiny_run):
    """WANDB_PROJECT (+ WANDB_MODE=offline) switches W&B on through axolotl's `wandb_*` keys; the offline run is
    written under the stage's folder and holds the trainer's values. Runs 1-3 did not ask: no W&B there."""
    dpop = tiny_run["dpop"]
    assert (
        "--use-tensorboard --wandb-project=smaug-tiny-test --wandb-mode=offline --wandb-name=tiny/tiny_dpop"
        in _log_after(dpop, tiny_run["dpop_offset"])
    )
    (run_file,) = dpop.output_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = {row["train/global_step"]: row for row in _wandb_history(run_file) if "train/loss" in row}
    resumed = [e for e in _logged(dpop) if e["step"] > tiny_run["dpop_killed_at"]]
    assert sorted(rows) == [e["step"] for e in resumed]
    for entry in resumed:
        for key in ("loss", "dpop/penalty", "dpop/active_fraction", "logps/chosen", "logps/rejected"):
            assert rows[entry["step"]][f"train/{key}"] == pytest.approx(entry[key], rel=1e-6, abs=1e-7)
    assert not (tiny_run["sft"].output_dir / "wandb").exists()


def test_launcher_flag_follows_the_recipes_deepspeed_setting():
    def command(chain, env):
        plan = C.plan_chain(chain)
        return train_command(plan.stages[0], C.Launch.from_env(plan.hardware, env), "cuda")

    qlora = command("smaug-72b-qlora", {"NUM_GPUS": "2"})  # no DeepSpeed: DDP over the GPUs
    assert qlora[-1] == "--multi_gpu" and "--use_deepspeed" not in qlora
    assert not {"--multi_gpu", "--use_deepspeed"} & set(command("smaug-72b", {"NUM_GPUS": "1"}))
    assert command("smaug-72b", {"NUM_GPUS": "8"})[-1] == "--use_deepspeed"
