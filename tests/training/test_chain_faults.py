"""Faults and bad input around `smaug chain` (issue 16) and its status and tracking (issue 14), without training:
plan-time refusals, settings that reverse or break training, locks, done-markers and what stages consumed,
finished-but-unmarked stages, leftovers of killed writes, `smaug chain status`. The real `axolotl train` runs
(kills, TensorBoard, W&B) are in tests/test_chain.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from axolotl_dpop.atomic import TEMP_NAME, host_name, remove_stale_temps, write_json
from smaug.cli import main as smaug_main
from smaug.common.errors import UserError
from smaug.common.paths import RECIPES_DIR, REPO_ROOT
from smaug.training import chains as C, lock, runner
from smaug.training.chains import inputs as I
from smaug.training.chains.checks import validate_stages
from smaug.training.chains.commands import tracking_settings
from smaug.training.chains.plan import Chain, ChainStage
from smaug.training.checkpoints import set_aside_incomplete_checkpoints
from smaug.training.state import Action, Kind, StageState
from tests.training.test_chain import finish, write_weights

TINY_SFT = yaml.safe_load((RECIPES_DIR / "cpu" / "tiny_sft.yml").read_text())
TINY_DPOP = yaml.safe_load((RECIPES_DIR / "cpu" / "tiny_dpop.yml").read_text())


def chain_file(tmp_path: Path, *recipes: dict, name: str = "t", hardware: dict | None = None) -> Path:
    paths = []
    for i, recipe in enumerate(recipes, 1):
        path = tmp_path / f"stage{i}.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        paths.append(str(path))
    chains = tmp_path / "chains.yaml"
    chains.write_text(yaml.safe_dump({name: {"hardware": hardware or {"accelerator": "cpu"}, "stages": paths}}))
    return chains


def two_stages(tmp_path: Path, base: Path) -> tuple[dict, dict]:
    """The tiny SFT -> DPOP chain with every path in tmp_path (data copied there, so tests may edit it)."""
    root = tmp_path / "o"
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name in ("tiny_sft.jsonl", "tiny_dpo.jsonl"):
        (data / name).write_bytes((RECIPES_DIR / "cpu" / "data" / name).read_bytes())
    sft = {
        **TINY_SFT,
        "base_model": str(base),
        "output_dir": str(root / "sft"),
        "dataset_prepared_path": str(tmp_path / "prep"),
        "datasets": [{**TINY_SFT["datasets"][0], "path": str(data / "tiny_sft.jsonl")}],
    }
    dpop = {
        **TINY_DPOP,
        "base_model": str(root / "sft"),
        "output_dir": str(root / "dpop"),
        "dataset_prepared_path": str(tmp_path / "prep"),
        "datasets": [{**TINY_DPOP["datasets"][0], "path": str(data / "tiny_dpo.jsonl")}],
    }
    return sft, dpop


def checkpoint(stage: ChainStage, step: int, max_steps: int, weights: bool = True, loss: float = 0.6931) -> Path:
    folder = stage.output_dir / f"checkpoint-{step}"
    if weights:
        write_weights(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "max_steps": max_steps, "log_history": [{"step": step, "loss": loss}]})
    )
    return folder


def started(chain: Chain, stage: ChainStage, earlier: list):
    """The run record the chain writes when it starts a stage."""
    record = I.new_record(chain, stage, earlier)
    record.dataset_prepared_path = str(I.prepared_folder(stage, record.inputs))
    record.write(stage.output_dir)
    return record


def no_training(monkeypatch):
    monkeypatch.setattr(runner, "run_logged", lambda *a, **k: pytest.fail(f"axolotl was started: {a[0]}"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------------------
# 1. stages that would write over each other, refused at plan time and in --dry-run


@pytest.mark.parametrize(
    "case, message",
    [
        ("same", r"stage 1 \(.*stage1.yml\) and stage 2 \(.*stage2.yml\) write to the same output folder"),
        ("nested", r"stage 1 \(.*stage1.yml\) and stage 2 \(.*stage2.yml\) write to nested output folders"),
        ("own output", r"stage 2 \(.*stage2.yml\) starts from its own output folder"),
        ("own checkpoint", r"stage 2 \(.*stage2.yml\) starts from its own output folder"),
        (
            "later stage",
            r"stage 1 \(.*stage1.yml\) starts from .*/o/dpop, the output of stage 2 \(.*stage2.yml\), "
            r"which runs after it \(a cycle\)",
        ),
        ("inside base", r"stage 1 \(.*stage1.yml\) writes inside the model folder it starts from"),
        (
            "prepared in output",
            r"dataset_prepared_path of stage 1 \(.*stage1.yml\) .* is inside the output folder of "
            r"stage 2 \(.*stage2.yml\)",
        ),
    ],
)
def test_stages_that_would_write_over_each_other_are_refused_at_plan_time(tmp_path, case, message):
    base = tmp_path / "base"
    base.mkdir()
    sft, dpop = two_stages(tmp_path, base)
    root = tmp_path / "o"
    if case == "same":
        dpop["output_dir"] = sft["output_dir"]
    elif case == "nested":
        dpop["output_dir"] = str(root / "sft" / "dpop")
    elif case == "own output":
        dpop["base_model"] = dpop["output_dir"]
    elif case == "own checkpoint":
        dpop["base_model"] = dpop["output_dir"] + "/checkpoint-2"
    elif case == "later stage":
        sft["base_model"] = dpop["output_dir"]
    elif case == "inside base":
        sft["output_dir"] = str(base / "sft")
        dpop["base_model"] = sft["output_dir"]
    elif case == "prepared in output":
        sft["dataset_prepared_path"] = str(root / "dpop" / "prepared")
    chains = chain_file(tmp_path, sft, dpop)
    with pytest.raises(UserError, match=message):
        C.plan_chain("t", chains_file=chains)
    with pytest.raises(UserError, match=message):  # the dry run refuses it too
        C.run_chain("t", dry_run=True, env={}, chains_file=chains)
    assert not root.exists(), "nothing is written"


def test_stages_may_share_a_prepared_data_folder_each_inputs_get_their_own_subfolder(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    chain = C.plan_chain("t", chains_file=chain_file(tmp_path, *two_stages(tmp_path, base)))
    sft, dpop = chain.stages
    assert sft.prepared_root == dpop.prepared_root
    inputs = I.stage_inputs(chain, sft, [], None)
    folder = I.prepared_folder(sft, inputs)
    assert folder.parent == sft.prepared_root and folder.name.startswith("inputs-")
    # an edited data file gets another folder: axolotl's own cache key ignores file contents
    data = Path(sft.recipe["datasets"][0]["path"])
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")
    assert I.prepared_folder(sft, I.stage_inputs(chain, sft, [], None)) != folder
    # a stage whose base stage has not run yet cannot know its inputs: no folder until then
    assert (
        I.prepared_folder(
            dpop, I.stage_inputs(chain, dpop, [StageState(Kind.NEW, Action.TRAIN, "not started", "")], None)
        )
        is None
    )


# ------------------------------------------------------------------------------------------------------------
# 7. values that reverse or break training: every stage checked before the first one trains


@pytest.mark.parametrize(
    "index, key, value, message",
    [
        # the DPOP plugin's check (axolotl_dpop.plugin.validate_plugin_config), run through axolotl's validation
        (1, "rl_beta", 0, r"axolotl rejects this recipe: .*rl_beta must be a number > 0.*, got 0\b"),
        (1, "rl_beta", -0.3, r"axolotl rejects this recipe: .*rl_beta must be a number > 0.*, got -0.3"),
        (1, "rl_beta", float("nan"), r"`rl_beta` is nan; training settings must be finite"),
        (0, "learning_rate", float("inf"), r"`learning_rate` is inf"),
        (0, "learning_rate", "nan", r"`learning_rate: 'nan'`: Input should be a finite number"),
        (0, "learning_rate", 0, r"`learning_rate: 0`: Input should be greater than 0"),
        (1, "learning_rate", -5.0e-5, r"`learning_rate: -5e-05`: Input should be greater than 0"),
        (0, "max_steps", 0, r"`max_steps: 0`: Input should be greater than or equal to 1"),
        (0, "max_steps", 2.5, r"`max_steps: 2.5`: Input should be a valid integer"),
        (0, "max_steps", True, r"`max_steps: True`: Input should be a valid integer"),
        (1, "micro_batch_size", 0, r"`micro_batch_size: 0`: Input should be greater than or equal to 1"),
        (1, "gradient_accumulation_steps", -1, r"`gradient_accumulation_steps: -1`: Input should be greater"),
        (0, "save_steps", -2, r"`save_steps: -2`: Input should be greater than 0"),
        (0, "warmup_ratio", 1.5, r"`warmup_ratio: 1.5`: Input should be less than or equal to 1"),
        (
            1,
            "datasets",
            [{**TINY_DPOP["datasets"][0], "temperature": float("nan")}],
            r"`datasets\[0\].temperature` is nan",
        ),
    ],
)
def test_values_that_reverse_or_break_training_stop_the_chain_before_any_stage(
    tmp_path, monkeypatch, index, key, value, message
):
    base = tmp_path / "base"
    base.mkdir()
    recipes = list(two_stages(tmp_path, base))
    recipes[index] = {**recipes[index], key: value}
    chains = chain_file(tmp_path, *recipes)
    no_training(monkeypatch)
    with pytest.raises(UserError, match=rf"stage{index + 1}.yml \(stage {index + 1} of chain 't'\): {message}"):
        C.run_chain("t", env={}, chains_file=chains)
    with pytest.raises(UserError, match=message):
        C.run_chain("t", dry_run=True, env={}, chains_file=chains)
    assert not (tmp_path / "o").exists()


def test_axolotls_and_the_plugins_own_validation_runs_on_every_stage_before_the_first(
    tmp_path, monkeypatch, tiny_model_dir
):
    # dpop_lambda < 0 is the plugin's to refuse; today it would be found only after the SFT stage had trained
    sft, dpop = two_stages(tmp_path, tiny_model_dir)
    chains = chain_file(tmp_path, sft, {**dpop, "dpop_lambda": -1})
    no_training(monkeypatch)
    with pytest.raises(
        UserError,
        match=r"stage2.yml \(stage 2 of chain 't'\): axolotl rejects this recipe: "
        r".*dpop_lambda.*>= 0",
    ):
        C.run_chain("t", env={}, chains_file=chains)
    assert not (tmp_path / "o" / "sft").exists()
    chains = chain_file(tmp_path, sft, {**dpop, "optimizer": "no_such_optimizer"})
    # accepted by axolotl's schema (a free string) but refused by the trainer when it is built
    with pytest.raises(
        UserError,
        match=r"stage2.yml .*`optimizer: no_such_optimizer` is not one transformers or "
        r"axolotl knows; use one of .*adamw_torch",
    ):
        C.run_chain("t", dry_run=True, env={}, chains_file=chains)
    chains = chain_file(tmp_path, {**sft, "lr_scheduler": "cosine_with_typo"}, dpop)
    with pytest.raises(UserError, match=r"stage1.yml .*`lr_scheduler: cosine_with_typo` is not one"):
        C.run_chain("t", env={}, chains_file=chains)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MASTER_PORT": "0"}, r"MASTER_PORT='0' is out of range \(1..65535\)"),
        ({"MASTER_PORT": "70000"}, r"MASTER_PORT='70000' is out of range"),
        ({"MASTER_PORT": "http"}, r"MASTER_PORT='http' is not a whole number"),
        ({"NNODES": "3"}, r"NNODES=3 cannot give the 8 GPUs in total this chain is sized for"),
        ({"NNODES": "16"}, r"NNODES=16 cannot give the 8 GPUs"),
        ({"NODE_RANK": "-1", "NNODES": "2"}, r"NODE_RANK='-1' is out of range"),
        ({"MASTER_ADDR": "10.0.0.1 "}, r"MASTER_ADDR='10.0.0.1 ' is not a host name or IP address"),
        ({"MASTER_ADDR": "http://node0"}, r"MASTER_ADDR='http://node0' is not a host name"),
        # issue 22.4: a multi-node launch without node 0's address used to fall back to 127.0.0.1 on every node
        ({"NNODES": "2"}, r"NNODES=2 needs MASTER_ADDR, node 0's address"),
        ({"NNODES": "2", "MASTER_ADDR": ""}, r"NNODES=2 needs MASTER_ADDR"),
        # issue 22.4: `nan` waited forever
        (
            {"NNODES": "2", "MASTER_ADDR": "n0", "SMAUG_NODE0_WAIT_S": "nan"},
            r"SMAUG_NODE0_WAIT_S='nan' is out of range",
        ),
        ({"NNODES": "2", "MASTER_ADDR": "n0", "SMAUG_NODE0_WAIT_S": "-5"}, r"SMAUG_NODE0_WAIT_S='-5' is out of range"),
    ],
)
def test_launch_values_that_cannot_work_are_refused(env, message):
    with pytest.raises(UserError, match=message):
        C.Launch.from_env({"accelerator": "cuda", "gpus": 8, "label": "8x H100"}, env)
    with pytest.raises(UserError, match=message):
        C.run_chain("smaug-34b", dry_run=True, env=env)


def test_a_cpu_chain_cannot_be_spread_over_several_nodes_or_processes():
    """Issue 22.4: NNODES=2 on a CPU chain started two independent trainings into one stage folder (the CPU launch
    has no launcher arguments, and the per-node-rank locks do not exclude each other)."""
    for env in ({"NNODES": "2", "MASTER_ADDR": "n0", "NODE_RANK": "1"}, {"NUM_GPUS": "2"}):
        with pytest.raises(UserError, match="this chain runs on the CPU in one process and cannot be spread"):
            C.Launch.from_env({"accelerator": "cpu"}, env)
        with pytest.raises(UserError, match="this chain runs on the CPU in one process"):
            C.run_chain("tiny", dry_run=True, env=env)
    assert C.Launch.from_env({"accelerator": "cpu"}, {"NNODES": "1"}).world_size == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"stages": [{"recipe": "x.yml"}]}, "stages.0 is {'recipe': 'x.yml'}: Input should be a valid string"),
        ({"stages": []}, "stages is []: List should have at least 1 item"),
        ({"hardware": {"accelerator": "cpu"}}, "stages is missing"),
        ({"stages": ["cpu/tiny_sft.yml"], "hardwre": {}}, "hardwre is {}: Extra inputs are not permitted"),
        ({"stages": ["cpu/tiny_sft.yml"], "hardware": {"accelerator": "tpu"}}, "hardware.accelerator is 'tpu'"),
        ({"stages": ["cpu/tiny_sft.yml"], "hardware": {"gpus": "eight"}}, "hardware.gpus is 'eight'"),
        ({"stages": ["cpu/tiny_sft.yml"], "hardware": {"gpus": 0}}, "hardware.gpus is 0"),
        (
            {"stages": ["cpu/tiny_sft.yml"], "hardware": {"min_gpu_memory_gib": float("nan")}},
            "min_gpu_memory_gib is nan",
        ),
    ],
)
def test_a_broken_chain_definition_is_a_user_error(tmp_path, spec, message):
    chains = tmp_path / "chains.yaml"
    chains.write_text(yaml.safe_dump({"t": spec}))
    with pytest.raises(UserError, match=rf"chains.yaml: chain 't': .*{re.escape(message)}"):
        C.plan_chain("t", chains_file=chains)


def test_a_node_count_that_divides_the_gpus_or_an_explicit_per_node_count_is_fine():
    assert C.Launch.from_env({"accelerator": "cuda", "gpus": 8}, {"NNODES": "2", "MASTER_ADDR": "n0"}).num_gpus == 4
    launch = C.Launch.from_env(
        {"accelerator": "cuda", "gpus": 8}, {"NNODES": "3", "NUM_GPUS": "3", "MASTER_ADDR": "n0"}
    )
    assert launch.world_size == 9
    plan = C.plan_chain("smaug-34b")
    assert "WARNING: NUM_GPUS x NNODES = 9" in C.describe(plan, launch)


# ------------------------------------------------------------------------------------------------------------
# 2. one run at a time per stage folder and node rank


HOLD = """
import sys, time
from pathlib import Path
from smaug.training import lock
with lock.hold([Path(p) for p in sys.argv[2:]], int(sys.argv[1]), "test"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_in_subprocess(folders: list[Path], rank: int = 0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(rank), *map(str, folders)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_outputs_stops_at_once_naming_the_first(tmp_path, monkeypatch, capsys):
    chain = C.plan_chain("tiny", tmp_path)
    sft = chain.stages[0].output_dir
    holder = hold_in_subprocess([sft])
    try:
        no_training(monkeypatch)
        with pytest.raises(UserError) as err:
            C.run_chain("tiny", tmp_path, env={})
        text = str(err.value)
        assert f"{sft} is in use by another chain run: pid {holder.pid} on {host_name()}" in text
        assert "-c" in text and " since 20" in text and f"kill {holder.pid}" in text
        assert not (tmp_path / "tiny" / "base-model").exists(), "not even the prepare step ran"
        assert smaug_main(["chain", "status", "tiny", "--output-root", str(tmp_path)]) == 0
        assert f"in use now by pid {holder.pid} on {host_name()}" in capsys.readouterr().out
        # the nodes of one multi-node run (other NODE_RANK) do not block each other; the same rank does
        with lock.hold([sft], 1, "test"):
            assert [rank for rank, _ in lock.holders(sft)] == [0, 1]
    finally:
        holder.send_signal(signal.SIGKILL)  # a crashed run: the kernel drops its lock
        holder.wait()
    assert lock.holder(sft) is None, "a lock file left by a dead process does not count"
    with lock.hold([sft], 0, "test"):
        assert lock.holder(sft).pid == os.getpid()
    assert not lock.lock_path(sft).exists()


ORPHANING_CHAIN = """
import os, sys
from pathlib import Path
from smaug.training import lock, runner
folder, token = Path(sys.argv[1]), sys.argv[2]
with lock.hold([folder], 0, "test") as held:
    runner.run_logged([sys.executable, "-c", "import time; print('training', flush=True); time.sleep(120)", token],
                      dict(os.environ), folder.parent / "log.txt", pass_fds=held)
"""


def test_killing_the_chain_but_not_its_axolotl_process_keeps_the_outputs_locked(tmp_path):
    """kill -9 of `smaug chain run` alone leaves its `axolotl train` running; it inherited the lock, so a new run
    cannot start a second trainer on the same folder."""
    import psutil

    folder, token = tmp_path / "sft", f"orphan-{os.getpid()}-{tmp_path.name}"
    chain = subprocess.Popen([sys.executable, "-c", ORPHANING_CHAIN, str(folder), token], cwd=REPO_ROOT)
    log = tmp_path / "log.txt"
    for _ in range(300):
        if log.exists() and "training" in log.read_text():
            break
        time.sleep(0.1)
    chain.send_signal(signal.SIGKILL)
    chain.wait()
    (orphan,) = [p for p in psutil.process_iter(["cmdline"]) if token in (p.info["cmdline"] or [])]
    try:
        held = lock.holder(folder)
        assert held is not None and held.pid == chain.pid
        assert "still holds the lock (find it: fuser" in held.describe(lock.lock_path(folder))
        with pytest.raises(UserError, match=rf"{folder} is in use by another chain run: pid {chain.pid} .*fuser"):
            with lock.hold([folder], 0, "test"):
                pass
    finally:
        orphan.kill()
        orphan.wait(10)
    assert lock.holder(folder) is None
    with lock.hold([folder], 0, "test"):
        pass


def test_a_file_system_without_flock_is_refused_naming_the_folder(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")  # ENOSYS, as on some network file systems

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)
    folder = tmp_path / "sft"
    with pytest.raises(UserError, match=rf"^{tmp_path}: this file system has no flock \(Function not implemented\)"):
        with lock.hold([folder], 0, "test"):
            pytest.fail("ran without a lock")
    assert not folder.exists()


# ------------------------------------------------------------------------------------------------------------
# 6, 11. done-markers: unreadable, stale recipe, stale inputs, and tracking that changes nothing


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "is empty"),
        (b"[]", "is not a stage record (Input should be an object)"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not a stage record (Invalid JSON"),
        (b'{"recipe": "x", ', "is not a stage record (Invalid JSON: EOF"),
        (b'{"recipe": "recipes/cpu/tiny_sft.yml"}', "is not a stage record (sha256: Field required)"),
        # a record without what the stage consumed (as smaug wrote before it recorded inputs)
        (b'{"recipe": "recipes/cpu/tiny_sft.yml", "sha256": "0"}', "is not a stage record (settings: Field required)"),
    ],
)
def test_an_unreadable_done_marker_is_called_unreadable_with_what_to_do(tmp_path, capsys, content, what):
    chain = C.plan_chain("tiny", tmp_path)
    sft = chain.stages[0]
    write_weights(sft.output_dir)
    sft.marker.write_bytes(content)
    state = I.assess_stage(chain, sft, [])
    assert state.kind is Kind.UNREADABLE and what in state.text
    assert smaug_main(["chain", "run", "tiny", "--output-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "different" not in err
    assert f"is unreadable: its done-marker {sft.marker} {what}" in err and f"; delete it (rm {sft.marker})" in err
    assert not (tmp_path / "tiny" / "base-model").exists()


def test_a_stage_is_stale_when_what_it_consumed_changed_and_says_what(tmp_path, tiny_model_copy, capsys):
    sft_recipe, dpop_recipe = two_stages(tmp_path, tiny_model_copy)
    chains = chain_file(tmp_path, sft_recipe, dpop_recipe)
    chain = C.plan_chain("t", chains_file=chains)
    sft, dpop = chain.stages
    sft_state = finish(chain, sft, [])
    assert sft_state.kind is Kind.DONE
    assert finish(chain, dpop, [sft_state]).kind is Kind.DONE
    assert [s.kind for s in I.assess_chain(chain)] == [Kind.DONE, Kind.DONE]

    # a local data file of the SFT stage is edited: SFT is stale, and so is DPOP, which started from it
    data = Path(sft.recipe["datasets"][0]["path"])
    original = data.read_bytes()
    data.write_bytes(original + original.splitlines(keepends=True)[0])
    states = I.assess_chain(chain)
    assert [s.kind for s in states] == [Kind.STALE, Kind.STALE]
    assert f"{data} changed (sha256 " in states[0].text
    assert f"its base model changed (stage {sft.name}, run {sft_state.run_id} -> stage {sft.name}, not done now" in (
        states[1].text
    )
    with pytest.raises(UserError) as err:
        C.run_chain("t", env={}, chains_file=chains)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and lines[-1] == "Nothing was trained."
    assert f"mv {sft.output_dir} {sft.output_dir}.stale-" in lines[0] and f"mv {dpop.output_dir}" in lines[1]
    data.write_bytes(original)  # the same contents again: nothing is stale
    assert [s.kind for s in I.assess_chain(chain)] == [Kind.DONE, Kind.DONE]

    # the SFT stage is retrained (a new run): DPOP is stale, naming both runs
    old_run = sft_state.run_id
    new_sft = finish(chain, sft, [], run_id="20990101T000000Z-abcdef")
    dpop_state = I.assess_stage(chain, dpop, [new_sft])
    assert dpop_state.kind is Kind.STALE
    assert f"(stage {sft.name}, run {old_run} -> stage {sft.name}, run 20990101T000000Z-abcdef)" in dpop_state.text
    finish(chain, sft, [], run_id=old_run)

    # the base model folder of the SFT stage changes
    (tiny_model_copy / "config.json").write_text((tiny_model_copy / "config.json").read_text() + " ")
    state = I.assess_stage(chain, sft, [])
    assert state.kind is Kind.STALE and "base_model/config.json changed (sha256" in state.text

    # a recipe setting changes: named with its old and new value
    (tmp_path / "stage1.yml").write_text(yaml.safe_dump({**sft_recipe, "learning_rate": 0.002}))
    chain = C.plan_chain("t", chains_file=chains)
    state = I.assess_stage(chain, chain.stages[0], [])
    assert state.kind is Kind.STALE and "recipe changed (learning_rate: 0.001 -> 0.002)" in state.text


@pytest.mark.parametrize("how", ["cp -p", "rsync -a"])
def test_a_data_file_replaced_by_another_version_with_the_same_size_and_mtime_is_seen(tmp_path, tiny_model_dir, how):
    """Issue 22.6: the recorded hash was reused while size and mtime were unchanged, which `cp -p` and `rsync -a`
    keep; ctime and inode change with any copy."""
    chain = C.plan_chain("t", chains_file=chain_file(tmp_path, two_stages(tmp_path, tiny_model_dir)[0]))
    sft = chain.stages[0]
    assert finish(chain, sft, []).kind is Kind.DONE
    data = Path(sft.recipe["datasets"][0]["path"])
    before, stat = data.read_bytes(), data.stat()
    other = before.replace(b"1", b"2", 1)  # another version of the same size
    assert other != before and len(other) == len(before)
    if how == "cp -p":  # written in place, then the times copied back
        data.write_bytes(other)
    else:  # a temp file renamed over the target
        (tmp_path / "data" / ".new").write_bytes(other)
        os.replace(tmp_path / "data" / ".new", data)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    state = I.assess_stage(chain, sft, [])
    assert state.kind is Kind.STALE and f"{data} changed (sha256" in state.text


def test_tracking_settings_do_not_make_a_done_stage_stale(tmp_path, tiny_model_dir):
    sft_recipe, dpop_recipe = two_stages(tmp_path, tiny_model_dir)
    chains = chain_file(tmp_path, sft_recipe, dpop_recipe)
    chain = C.plan_chain("t", chains_file=chains)
    finish(chain, chain.stages[0], [])
    # tracking turned on in the recipe itself (or by the chain from the environment: not part of the recipe)
    (tmp_path / "stage1.yml").write_text(
        yaml.safe_dump({**sft_recipe, "use_tensorboard": False, "wandb_project": "p", "mlflow_experiment_name": "e"})
    )
    again = C.plan_chain("t", chains_file=chains)
    assert again.stages[0].digest == chain.stages[0].digest
    assert I.assess_stage(again, again.stages[0], []).kind is Kind.DONE


# ------------------------------------------------------------------------------------------------------------
# 4, 11. a stage whose training had finished is finished without training; lost final weights


def test_a_finished_but_unmarked_stage_is_completed_from_its_last_checkpoint_without_training(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    sft_recipe, _ = two_stages(tmp_path, tiny_model_dir)
    chains = chain_file(tmp_path, sft_recipe)
    chain = C.plan_chain("t", chains_file=chains)
    sft = chain.stages[0]
    record = started(chain, sft, [])
    last = checkpoint(sft, 6, 6)  # killed after the last checkpoint, before the final model was saved
    leftover = sft.output_dir / f".model.safetensors.{host_name()}.{dead_pid()}.a1b2c3.tmp"
    leftover.write_bytes(b"x" * 1000)  # an atomic write killed midway
    state = I.assess_stage(chain, sft, [])
    assert (state.kind, state.restore_from) == (Kind.FINISHED, last) and "config.json is missing" in state.text
    assert state.next.startswith("copy the final weights from checkpoint-6")

    no_training(monkeypatch)
    assert C.run_chain("t", env={}, chains_file=chains) == 0
    out = capsys.readouterr().out
    assert "training had finished at checkpoint-6; copied its weights" in out and "marked done without training" in out
    assert (sft.output_dir / "model.safetensors").read_bytes() == (last / "model.safetensors").read_bytes()
    marker = json.loads(sft.marker.read_text())
    assert marker["run_id"] == record.run_id and marker["inputs"] == record.inputs.model_dump(mode="json")
    provenance = json.loads((sft.output_dir / "smaug_provenance.json").read_text())
    assert "training finished at checkpoint-6" in provenance["completed_by"] and provenance["recipe"] == sft.name
    assert not leftover.exists(), "the chain removes temp files of killed writers"
    assert I.assess_stage(chain, sft, []).kind is Kind.DONE


def test_a_finished_run_whose_weights_cannot_be_restored_says_exactly_what_to_do(tmp_path, tiny_model_dir):
    sft_recipe, _ = two_stages(tmp_path, tiny_model_dir)
    chain = C.plan_chain("t", chains_file=chain_file(tmp_path, sft_recipe))
    sft = chain.stages[0]
    last = checkpoint(sft, 6, 6, weights=False)
    (last / "global_step6").mkdir()
    (last / "zero_to_fp32.py").write_text("# DeepSpeed writes this into its checkpoints\n")
    state = I.assess_stage(chain, sft, [])
    assert state.kind is Kind.FINISHED and state.restore_from is None and state.action is Action.STOP
    assert f"python {last}/zero_to_fp32.py {last} {sft.output_dir} --safe_serialization" in state.next


def test_a_done_stage_that_lost_its_weights_is_restored_or_stops_with_what_to_do(tmp_path, tiny_model_dir):
    sft_recipe, _ = two_stages(tmp_path, tiny_model_dir)
    chain = C.plan_chain("t", chains_file=chain_file(tmp_path, sft_recipe))
    sft = chain.stages[0]
    finish(chain, sft, [])
    weights = sft.output_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-2])  # a truncated copy
    state = I.assess_stage(chain, sft, [])
    assert state.kind is Kind.WEIGHTS_MISSING and "model.safetensors is truncated" in state.text
    assert state.action is Action.STOP and "no checkpoint is left to restore them from" in state.next
    assert "mv " in state.next
    checkpoint(sft, 6, 6)
    state = I.assess_stage(chain, sft, [])
    assert state.restore_from == sft.output_dir / "checkpoint-6"
    assert state.action is Action.FINISH


def test_a_model_in_a_stage_folder_that_no_run_of_the_stage_wrote_is_never_trained_over(tmp_path):
    chain = C.plan_chain("tiny", tmp_path)
    sft = chain.stages[0]
    write_weights(sft.output_dir)  # no done-marker, no checkpoints
    state = I.assess_stage(chain, sft, [])
    assert state.kind is Kind.OCCUPIED and state.action is Action.STOP
    assert f"mv {sft.output_dir} {sft.output_dir}.old-" in state.next
    with pytest.raises(UserError, match="is occupied: it holds model weights but no done-marker"):
        C.run_chain("tiny", tmp_path, env={})


def test_a_merge_killed_after_its_weights_leaves_no_merged_model_taken_for_done(tmp_path, tiny_model_dir, monkeypatch):
    """Issue 22.3: `axolotl merge-lora` killed after writing the merged weights but before the tokenizer left a
    `merged` folder the next run took for done. The merge now lands as one unit (a staging folder moved into
    place once whole) and a merged folder counts only with its tokenizer."""
    from axolotl_dpop.provenance import PROVENANCE_FILE, provenance_record, write_provenance

    recipe = {**two_stages(tmp_path, tiny_model_dir)[0], "adapter": "lora", "lora_r": 4, "lora_target_linear": True}
    chains = chain_file(tmp_path, recipe)
    chain = C.plan_chain("t", chains_file=chains)
    stage = chain.stages[0]
    started(chain, stage, [])
    write_weights(checkpoint(stage, 6, 6, weights=False), adapter=True)  # training had finished
    write_weights(stage.output_dir, adapter=True)
    write_provenance(stage.output_dir, provenance_record(base_model=str(tiny_model_dir), license="apache-2.0"))
    killed = []

    def merge(cmd, env, log_path, **kwargs):
        assert cmd[1] == "merge-lora", "no training"
        into = next((Path(a.split("=", 1)[1]) for a in cmd if a.startswith("--output-dir=")), stage.output_dir)
        write_weights(into / "merged")
        if not killed:  # killed after the weights, before the tokenizer
            killed.append(into)
            (into / "merged" / "tokenizer_config.json").unlink()
            return -9
        return 0

    monkeypatch.setattr(runner, "run_logged", merge)
    assert C.run_chain("t", env={}, chains_file=chains) == -9
    state = I.assess_stage(chain, stage, [])
    assert state.kind is Kind.FINISHED and state.next.startswith("run axolotl merge-lora")
    assert C.run_chain("t", env={}, chains_file=chains) == 0
    merged = stage.output_dir / "merged"
    assert (merged / "tokenizer_config.json").is_file() and stage.marker.is_file()
    assert json.loads((merged / PROVENANCE_FILE).read_text())["merged_lora"]["adapter_dir"] == str(stage.output_dir)
    assert not killed[0].exists(), "the staging folder is gone"


def test_a_stage_folder_that_is_a_symlink_loop_names_the_link_to_remove(tmp_path, capsys):
    """Issue 22.5: the advice used to be to delete the done-marker inside the loop, which cannot help."""
    (tmp_path / "tiny").mkdir()
    link = tmp_path / "tiny" / "sft"
    link.symlink_to(link)
    for command in ("run", "status"):
        assert smaug_main(["chain", command, "tiny", "--output-root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"{link} is a symbolic link that leads back to itself (a loop)" in err and f"rm {link}" in err
        assert len(err.strip().splitlines()) == 1


def test_a_second_interrupted_save_of_the_same_checkpoint_does_not_block_reruns(tmp_path):
    for attempt in range(2):
        half = tmp_path / "checkpoint-4"
        half.mkdir()
        (half / "model.safetensors").write_bytes(b"partial" * (attempt + 1))
        assert [p.name for p in set_aside_incomplete_checkpoints(tmp_path)] == ["incomplete-checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incomplete-checkpoint-4"]
    assert (tmp_path / "incomplete-checkpoint-4" / "model.safetensors").read_bytes() == b"partial" * 2
    (tmp_path / "tmp-checkpoint-6").mkdir()  # the staging folder of transformers versions that rename when done
    assert [p.name for p in set_aside_incomplete_checkpoints(tmp_path)] == ["incomplete-checkpoint-6"]
    (tmp_path / "checkpoint-8").write_text("")  # a file axolotl would try to resume from
    assert [p.name for p in set_aside_incomplete_checkpoints(tmp_path)] == ["incomplete-checkpoint-8"]


def test_a_stage_done_meanwhile_is_seen_just_before_it_runs(tmp_path, tiny_model_dir, monkeypatch):
    """The state is re-read before each stage: here something outside the chain's lock marks stage 2 done with
    another recipe while stage 1 trains; stage 2 then stops instead of training over it."""
    chains = chain_file(tmp_path, *two_stages(tmp_path, tiny_model_dir))
    chain = C.plan_chain("t", chains_file=chains)
    sft, dpop = chain.stages

    def fake_training(cmd, env, log_path, **kwargs):
        assert log_path.parent == sft.output_dir, "stage 2 must not train"
        write_weights(sft.output_dir)
        finish(chain, dpop, [], digest="0" * 64)
        return 0

    monkeypatch.setattr(runner, "run_logged", fake_training)
    with pytest.raises(UserError, match=r"stage2.yml \(stage 2 of chain 't'.* is stale: the recipe changed"):
        C.run_chain("t", env={}, chains_file=chains)
    assert sft.marker.is_file()


def test_a_failing_stage_says_why_and_what_to_do(tmp_path, tiny_model_dir, monkeypatch, capsys):
    chains = chain_file(tmp_path, two_stages(tmp_path, tiny_model_dir)[0])

    def failing(cmd, env, log_path, **kwargs):
        log_path.write_text("Traceback (most recent call last):\nValueError: the data file has no rows\n")
        return 1

    monkeypatch.setattr(runner, "run_logged", failing)
    assert C.run_chain("t", env={}, chains_file=chains) == 1
    err = capsys.readouterr().err
    assert (
        "failed with exit code 1 before saving a new checkpoint; log: " in err
        and "last error: ValueError: the data file has no rows. Fix the cause, then run" in err
    )


@pytest.mark.parametrize("where", ["under a file", "read-only", "a file as output_dir"])
def test_an_output_root_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys, where):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    root = {"under a file": blocker / "out", "read-only": Path("/proc/smaug-outputs"), "a file as output_dir": tmp_path}
    if where == "a file as output_dir":
        (tmp_path / "tiny").mkdir()
        (tmp_path / "tiny" / "sft").write_text("")
    assert smaug_main(["chain", "run", "tiny", "--output-root", str(root[where])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {
        "under a file": f"{blocker} is a file",
        "read-only": "/proc/smaug-outputs",
        "a file as output_dir": f"{tmp_path}/tiny/sft is a file",
    }[where] in err


# ------------------------------------------------------------------------------------------------------------
# 5. temp files of writers killed mid-write


KILLED_WRITER = """
import os, signal, sys
from axolotl_dpop.atomic import atomic_write
def write(tmp):
    tmp.write_bytes(b"x" * 100_000)
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_write_only_if_its_writer_is_dead(tmp_path):
    target = tmp_path / "pairs.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=REPO_ROOT)
    assert writer.wait() == -signal.SIGKILL
    (leftover,) = tmp_path.iterdir()
    match = TEMP_NAME.match(leftover.name)
    assert match and (match["name"], match["host"], match["pid"]) == ("pairs.jsonl", host_name(), str(writer.pid))
    live = tmp_path / f".pairs.jsonl.{host_name()}.{os.getpid()}.live.tmp"  # a writer still at work
    remote = tmp_path / f".pairs.jsonl.otherhost.{writer.pid}.remote.tmp"  # cannot tell from here
    other = tmp_path / f".other.jsonl.{host_name()}.{writer.pid}.other.tmp"  # another target's
    for path in (live, remote, other):
        path.write_text("")
    write_json(target, {"ok": True})
    assert not leftover.exists() and live.exists() and remote.exists() and other.exists()
    assert remove_stale_temps(tmp_path) == [other]  # the chain's sweep at start: every target


def test_the_plugins_provenance_writer_names_and_cleans_its_temp_files_the_same_way(tmp_path):
    from axolotl_dpop import atomic, provenance as plugin

    name = atomic._temp_prefix(tmp_path / plugin.PROVENANCE_FILE) + "abc123.tmp"
    assert TEMP_NAME.match(name)["name"] == plugin.PROVENANCE_FILE
    stale = tmp_path / f".{plugin.PROVENANCE_FILE}.{host_name()}.{dead_pid()}.abc123.tmp"
    stale.write_text("{")
    plugin.write_provenance(tmp_path, plugin.provenance_record(base_model=None, license="apache-2.0"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [plugin.PROVENANCE_FILE]


# ------------------------------------------------------------------------------------------------------------
# issue 14: tracking through axolotl's own keys, and `smaug chain status`


def test_tracking_is_switched_on_through_axolotls_own_keys_set_by_the_chain(monkeypatch, capsys):
    chain = C.plan_chain("smaug-34b")
    sft = chain.stages[0]
    assert tracking_settings(chain, sft, {}) == {"use_tensorboard": True}
    assert tracking_settings(chain, sft, {"SMAUG_TENSORBOARD": "0"}) == {}
    wandb = {"WANDB_PROJECT": "smaug", "WANDB_ENTITY": "lab", "WANDB_MODE": "offline"}
    assert tracking_settings(chain, sft, wandb) == {
        "use_tensorboard": True,
        "wandb_project": "smaug",
        "wandb_entity": "lab",
        "wandb_mode": "offline",
        "wandb_name": "smaug-34b/smaug34b_sft",
    }
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "mlflow" else real_find_spec(name))
    with pytest.raises(UserError, match="MLFLOW_TRACKING_URI is set but the `mlflow` package is not installed"):
        tracking_settings(chain, sft, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert tracking_settings(chain, sft, {"SMAUG_TENSORBOARD": "0", "MLFLOW_TRACKING_URI": "http://m:5000"}) == {
        "mlflow_tracking_uri": "http://m:5000",
        "mlflow_experiment_name": "smaug-34b",
        "mlflow_run_name": "smaug-34b/smaug34b_sft",
    }
    monkeypatch.undo()

    assert C.run_chain("smaug-34b", dry_run=True, env=wandb) == 0
    out = capsys.readouterr().out
    assert (
        "axolotl train recipes/smaug34b_dpop.yml --use-tensorboard --wandb-project=smaug --wandb-entity=lab "
        "--wandb-mode=offline --wandb-name=smaug-34b/smaug34b_dpop --dataset-prepared-path="
    ) in out
    cfg = validate_stages(
        chain, C.Launch.from_env(chain.hardware, {}), {0: tracking_settings(chain, sft, wandb)}, [sft]
    )[0]
    assert cfg.use_tensorboard is True and cfg.wandb_project == "smaug" and cfg.wandb_mode == "offline"


def test_status_reads_files_only_and_says_what_the_next_run_does(tmp_path):
    chain = C.plan_chain("tiny", tmp_path)
    sft, dpop = chain.stages
    checkpoint(sft, 6, 6, loss=2.5)
    sft_state = finish(chain, sft, [])
    started(chain, dpop, [sft_state])
    checkpoint(dpop, 4, 8, loss=0.6931)
    script = (
        "import sys, time\nfrom smaug.cli import main\nmain(sys.argv[1:])\n"
        "print('HEAVY', [m for m in ('torch', 'axolotl', 'transformers', 'datasets', 'accelerate') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "chain", "status", "tiny", "--output-root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout
    assert (
        f"stage 1/2 recipes/cpu/tiny_sft.yml: done\n  output: {sft.output_dir}\n"
        "  last logged: step 6 of 6, loss 2.5000 (checkpoint-6)\n  next run: skip (done)" in out
    )
    assert (
        f"stage 2/2 recipes/cpu/tiny_dpop.yml: resumable from checkpoint-4\n  output: {dpop.output_dir}\n"
        "  last logged: step 4 of 8, loss 0.6931 (checkpoint-4)\n"
        "  next run: resume from checkpoint-4 (step 4 of 8)" in out
    )
    assert f"next `smaug chain run tiny --output-root {tmp_path}`: stage 2: resume from checkpoint-4" in out
    assert "HEAVY []" in out, "status imports no model, axolotl or torch"
    made = subprocess.run(
        ["make", "-n", "status", "CHAIN=tiny"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "smaug chain status tiny" in made


def test_the_status_of_a_chain_with_a_stale_and_a_finished_stage(tmp_path, tiny_model_dir):
    sft_recipe, dpop_recipe = two_stages(tmp_path, tiny_model_dir)
    chain = C.plan_chain("t", chains_file=chain_file(tmp_path, sft_recipe, dpop_recipe))
    sft, dpop = chain.stages
    sft_state = finish(chain, sft, [])
    started(chain, dpop, [sft_state])
    checkpoint(dpop, 8, 8)
    write_weights(dpop.output_dir)
    text = C.status_report(chain)
    assert "stage 2/2 " in text and "finished at checkpoint-8 but not marked done (final weights complete)" in text
    assert "next run: finish without training: write the done-marker (training had finished at checkpoint-8)" in text
    data = Path(sft.recipe["datasets"][0]["path"])
    data.write_text(data.read_text() + "\n{}")
    text = C.status_report(chain)
    assert "stage 1/2 " in text and "tiny_sft.jsonl changed (sha256" in text
    assert "stops before any training (see STOPS above)" in text


def test_status_of_a_stage_copied_with_its_outputs_elsewhere_stays_done(tmp_path):
    """Stage hashes cover the recipe as committed, not where --output-root puts it."""
    first = C.plan_chain("tiny", tmp_path / "a")
    second = C.plan_chain("tiny", tmp_path / "b")
    assert first.stages[1].digest == second.stages[1].digest
    assert (
        replace(first.stages[1], committed={**first.stages[1].committed, "learning_rate": 1}).digest
        != first.stages[1].digest
    )
