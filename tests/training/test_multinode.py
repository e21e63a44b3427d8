"""Several nodes: the SLURM batch script (run with a simulated SLURM: fake `scontrol`/`srun` on PATH, DRY_RUN=1)
and the rules for shared storage (only node 0 merges and writes done-markers and provenance; the other nodes
wait for node 0's marker before they go on)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from smaug.common.errors import UserError
from smaug.common.paths import REPO_ROOT
from smaug.training import chains as C
from smaug.training.chains import run as chain_run
from smaug.training.chains.plan import STAGE_LOG
from smaug.training.tiny_model import build_tiny_llama
from tests.training.test_chain import finish, write_weights

SBATCH = REPO_ROOT / "scripts" / "slurm" / "smaug.sbatch"

FAKE_SCONTROL = """#!/bin/bash
# `scontrol show hostnames LIST` of a real cluster, answered from FAKE_HOSTS
[ "$1 $2" = "show hostnames" ] && [ -n "$3" ] || exit 1
[ -z "$FAKE_SCONTROL_EMPTY" ] || exit 0  # a node list scontrol cannot expand
for host in $FAKE_HOSTS; do echo "$host"; done
"""

# `srun --nodes=N ... --label CMD...`: runs CMD once per node, one after the other (the last node first), with the
# variables SLURM sets in each node's task, and prefixes every line with the task number as --label does; a failing
# node ends the job (--kill-on-bad-exit) before node 0 spends its time.
FAKE_SRUN = f"""#!{sys.executable}
import os, subprocess, sys
args = sys.argv[1:]
nodes, label = 1, False
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option.startswith("--nodes="):
        nodes = int(option.split("=", 1)[1])
    label = label or option == "--label"
hosts = os.environ["FAKE_HOSTS"].split()
code = 0
for node in reversed(range(nodes)):
    env = dict(os.environ, SLURM_NODEID=str(node), SLURM_PROCID=str(node), SLURM_LOCALID="0",
               SLURMD_NODENAME=hosts[node])
    if node > 0 and os.environ.get("FAKE_UNSHARED"):  # what a node-local outputs folder looks like
        env["SHARED_MARK"] = env["SHARED_MARK"] + ".not-on-this-node"
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        print(f"{{node}}: {{line}}" if label else line)
    code = code or proc.returncode
    if code:
        break
sys.exit(code)
"""


def _fake_bin(tmp_path: Path, with_scontrol: bool) -> Path:
    fake = tmp_path / "fake-slurm-bin"
    fake.mkdir()
    tools = {"srun": FAKE_SRUN, **({"scontrol": FAKE_SCONTROL} if with_scontrol else {})}
    for name, text in tools.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    return fake


def _sbatch(tmp_path, chain, hosts, with_scontrol=True, **slurm):
    """Run the batch script as sbatch would on the first node, with the SLURM variables given."""
    fake = _fake_bin(tmp_path, with_scontrol)
    path = [str(fake), str(Path(sys.executable).parent)]
    path += [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "scontrol").exists()]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "NUM_GPUS", "NNODES", "NODE_RANK", "MASTER_", "SMAUG_"))
    }
    env.update(
        PATH=os.pathsep.join(path),
        FAKE_HOSTS=" ".join(hosts),
        DRY_RUN="1",
        CHAIN=chain,
        SLURM_SUBMIT_DIR=str(REPO_ROOT),
        SLURM_JOB_ID="4242",
        SMAUG_OUTPUT_ROOT=str(tmp_path / "shared-out"),
    )
    env.update({"SLURM_NNODES": str(len(hosts)), **slurm})
    return subprocess.run(["bash", str(SBATCH)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _node_lines(out: str, node: int) -> str:
    return "\n".join(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(f"{node}: "))


def test_sbatch_two_nodes_plan_each_nodes_accelerate_arguments(tmp_path):
    proc = _sbatch(tmp_path, "smaug-72b", ["gpu07", "gpu08"], SLURM_JOB_NODELIST="gpu[07-08]", SLURM_GPUS_ON_NODE="8")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CHAIN=smaug-72b NNODES=2 NUM_GPUS=8 MASTER_ADDR=gpu07 MASTER_PORT=29500" in proc.stdout
    for node in (0, 1):
        plan = _node_lines(proc.stdout, node)
        assert (
            f"launch: NUM_GPUS=8 NNODES=2 NODE_RANK={node} MASTER_ADDR=gpu07 MASTER_PORT=29500 (world size 16)" in plan
        )
        assert (
            f"--launcher accelerate -- --num_processes 16 --num_machines 2 --machine_rank {node} "
            "--main_process_ip gpu07 --main_process_port 29500 --use_deepspeed --deepspeed_multinode_launcher "
            "standard"
        ) in plan
        assert f"output root: {tmp_path / 'shared-out'}" in plan
    assert not list((tmp_path / "shared-out").glob(".slurm-job-*")), "the shared-storage probe is cleaned up"


def test_sbatch_without_scontrol_parses_the_node_list_and_typed_gpu_counts(tmp_path):
    proc = _sbatch(
        tmp_path,
        "smaug-34b",
        ["node3", "node4"],
        with_scontrol=False,
        SLURM_JOB_NODELIST="node[3-4]",
        SLURM_GPUS_PER_NODE="h100:4",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in (0, 1):
        plan = _node_lines(proc.stdout, node)
        commands = re.findall(r"command: .*", plan)
        assert len(commands) == 2  # SFT then DPOP, both on 2 nodes x 4 GPUs
        for command in commands:
            assert (
                f"--num_processes 8 --num_machines 2 --machine_rank {node} --main_process_ip node3 "
                "--main_process_port 29500 --use_deepspeed --deepspeed_multinode_launcher standard"
            ) in command


@pytest.mark.parametrize(
    "nodelist,first",
    [
        ("gpu[07-09,12],cpu1", "gpu07"),
        ("a1,b[3-4]", "a1"),
        ("node[1-2]", "node1"),
        ("solo", "solo"),
        ("x[5,9]", "x5"),
        ("node[1-2]-ib", "node1-ib"),  # issue 22.4: a suffix after the brackets was dropped
        ("rack[1-2]-n[07-08],x", "rack1-n07"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, first):
    function = re.search(r"^first_host\(\) \{.*?^\}", SBATCH.read_text(), re.S | re.M).group(0)
    out = subprocess.run(["bash", "-c", f"{function}\nfirst_host '{nodelist}'"], capture_output=True, text=True)
    assert out.stdout.strip() == first


@pytest.mark.parametrize(
    "slurm, message",
    [
        # issue 22.4: an empty first host made every node fall back to 127.0.0.1
        ({"FAKE_SCONTROL_EMPTY": "1"}, "no first host in SLURM_JOB_NODELIST=gpu[07-08] (scontrol gave none)"),
        ({"SLURM_NNODES": "0"}, "SLURM_NNODES='0' is not a node count"),
        ({"SLURM_NNODES": "two"}, "SLURM_NNODES='two' is not a node count"),
    ],
)
def test_sbatch_refuses_a_node_list_or_count_that_cannot_make_a_multi_node_run(tmp_path, slurm, message):
    proc = _sbatch(
        tmp_path, "smaug-72b", ["gpu07", "gpu08"], SLURM_JOB_NODELIST="gpu[07-08]", SLURM_GPUS_ON_NODE="8", **slurm
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stdout + proc.stderr
    assert "CHAIN=" not in proc.stdout, "no node was started"


def test_sbatch_never_lets_the_nodes_build_the_venv(tmp_path):
    """Issue 22.4: every node runs `make CHAIN`, whose set-up would build .venv in the shared checkout on all nodes
    at once: the script stops unless it is built, and the nodes' make takes it as it is."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Makefile", "pyproject.toml", "requirements", "plugins", "scripts"):
        (checkout / name).symlink_to(REPO_ROOT / name)
    proc = _sbatch(
        tmp_path, "smaug-72b", ["gpu07"], SLURM_JOB_NODELIST="gpu07", SLURM_GPUS_ON_NODE="8", SMAUG_REPO=str(checkout)
    )
    assert proc.returncode == 2 and f"{checkout}/.venv is missing or out of date: run `make setup`" in proc.stderr
    assert not (checkout / ".venv").exists()
    assert 'exec make -o "$VENV/.installed" "$CHAIN"' in SBATCH.read_text()


def test_sbatch_stops_when_the_outputs_are_not_shared(tmp_path):
    proc = _sbatch(
        tmp_path,
        "smaug-72b",
        ["gpu07", "gpu08"],
        SLURM_JOB_NODELIST="gpu[07-08]",
        SLURM_GPUS_ON_NODE="8",
        FAKE_UNSHARED="1",
    )
    assert proc.returncode != 0
    assert "1: node 1: " in proc.stdout and "is not on storage shared by all nodes" in proc.stdout


def test_sbatch_needs_a_chain_and_gpus(tmp_path):
    proc = _sbatch(tmp_path, "", ["gpu07"], SLURM_JOB_NODELIST="gpu07", SLURM_GPUS_ON_NODE="8")
    assert proc.returncode == 2 and "set CHAIN" in proc.stderr
    (tmp_path / "no-gpus").mkdir()
    proc = _sbatch(tmp_path / "no-gpus", "smaug-72b", ["gpu07"], SLURM_JOB_NODELIST="gpu07")
    assert proc.returncode == 2 and "no GPU count" in proc.stderr


# ------------------------------------------------------------------------------------------------------------
# shared storage: one writer per stage


def test_provenance_is_written_by_global_rank_zero_only(tmp_path, monkeypatch):
    from axolotl.utils.dict import DictDefault

    from axolotl_dpop.plugin import DPOPPlugin
    from axolotl_dpop.provenance import PROVENANCE_FILE

    cfg = DictDefault(
        {"output_dir": str(tmp_path), "base_model": "org/model", "rl": "dpo", "dpop": True, "datasets": []}
    )
    for rank in ("8", "15", "1"):  # node 1 of 2 x 8 GPUs, and the second GPU of node 0
        monkeypatch.setenv("RANK", rank)
        DPOPPlugin().post_train(cfg, model=None)
        assert not (tmp_path / PROVENANCE_FILE).exists(), f"RANK={rank} wrote provenance"
    monkeypatch.setenv("RANK", "0")
    DPOPPlugin().post_train(cfg, model=None)
    assert json.loads((tmp_path / PROVENANCE_FILE).read_text())["training"]["rl"] == "dpop"


def _launch(node_rank: int, wait_s: float = 30) -> C.Launch:
    return C.Launch(num_gpus=8, nnodes=2, node_rank=node_rank, master_addr="gpu07", node0_wait_s=wait_s)


def test_other_nodes_wait_for_node_zeros_marker_and_never_write_it(tmp_path, monkeypatch):
    monkeypatch.setattr(chain_run, "NODE0_POLL_S", 0.05)
    chain = C.plan_chain("tiny", tmp_path)
    stage = chain.stages[0]
    stage.output_dir.mkdir(parents=True)
    with pytest.raises(UserError, match=r"node 1: recipes/cpu/tiny_sft.yml ended here, but node 0 has not marked"):
        chain_run.wait_for_node0(chain, stage, [], _launch(1, wait_s=0.3), "sft")
    assert not stage.marker.exists()

    returned = []
    node1 = threading.Thread(
        target=lambda: returned.append(chain_run.wait_for_node0(chain, stage, [], _launch(1), "sft"))
    )
    node1.start()
    time.sleep(0.5)
    assert node1.is_alive() and not returned, "node 1 must wait, not skip past the stage"
    assert not stage.marker.exists()
    finish(chain, stage, [])  # node 0 finishes (after saving / merging)
    node1.join(10)
    assert not node1.is_alive() and returned == [None]


def test_a_marker_from_another_recipe_version_stops_the_waiting_node(tmp_path, monkeypatch):
    monkeypatch.setattr(chain_run, "NODE0_POLL_S", 0.05)
    chain = C.plan_chain("tiny", tmp_path)
    stage = chain.stages[0]
    finish(chain, stage, [], digest="0" * 64)
    with pytest.raises(UserError, match="run the same checkout on every node"):
        chain_run.wait_for_node0(chain, stage, [], _launch(1, wait_s=5), "sft")


def test_on_two_nodes_only_node_zero_merges_and_marks_a_lora_stage(tmp_path, monkeypatch):
    """The chain on node 0 and node 1 of a 2-node run of a LoRA chain (threads of this process, each with its
    own node rank and so its own lock), with the training and merge commands recorded instead of run."""
    from axolotl_dpop.provenance import PROVENANCE_FILE
    from smaug.training import runner

    monkeypatch.setattr(chain_run, "NODE0_POLL_S", 0.05)
    root = tmp_path / "shared"
    # the tiny QLoRA chain as if on GPUs (a CPU chain cannot be multi-node)
    chains = tmp_path / "chains.yaml"
    spec = C.load_chains()["tiny-qlora"] | {"hardware": {"accelerator": "cuda", "gpus": 2}}
    chains.write_text(yaml.safe_dump({"q": spec}))
    stage = C.plan_chain("q", root, chains).stages[0]
    base = root / "tiny" / "base-model"
    build_tiny_llama(base)  # the prepare step finds the base model and skips
    ran: dict[int, list[str]] = {0: [], 1: []}

    def fake_run(cmd, env, log_path, **_):  # both "nodes" run in this process; the log file says which one calls
        node = 0 if log_path.name == STAGE_LOG else 1
        ran[node].append(f"{Path(cmd[0]).name} {cmd[1]} -> {log_path.name}")
        if cmd[1] == "train" and node == 0:  # what training leaves on shared storage (the plugin: RANK 0)
            write_weights(stage.output_dir, adapter=True)
            (stage.output_dir / PROVENANCE_FILE).write_text(
                json.dumps({"schema": 1, "base_model": str(base), "license": None, "training": {"rl": "dpop"}})
            )
        if cmd[1] == "merge-lora":
            write_weights(Path(next(a for a in cmd if a.startswith("--output-dir=")).split("=", 1)[1]) / "merged")
        return 0

    monkeypatch.setattr(runner, "run_logged", fake_run)
    env = {"NUM_GPUS": "1", "NNODES": "2", "MASTER_ADDR": "gpu07"}
    results = {}
    node1 = threading.Thread(
        target=lambda: results.setdefault(1, C.run_chain("q", root, False, True, {**env, "NODE_RANK": "1"}, chains))
    )
    node1.start()
    deadline = time.monotonic() + 60
    while not ran[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # node 1 has trained; give it time to (wrongly) merge or mark
    assert node1.is_alive() and not stage.marker.exists(), "node 1 waits for node 0"
    assert ran[1] == ["axolotl train -> smaug_stage.node1.log"], "node 1 trains and does not merge"
    assert not (stage.output_dir / "merged").exists()

    assert C.run_chain("q", root, False, True, {**env, "NODE_RANK": "0"}, chains) == 0
    node1.join(30)
    assert not node1.is_alive() and results[1] == 0
    assert ran[0] == ["axolotl train -> smaug_stage.log", "axolotl merge-lora -> smaug_stage.log"]
    merged = json.loads((stage.output_dir / "merged" / PROVENANCE_FILE).read_text())
    assert merged["merged_lora"]["adapter_dir"] == str(stage.output_dir) and merged["training"]["rl"] == "dpop"
    assert json.loads(stage.marker.read_text())["sha256"] == stage.digest
