"""The chunked head and the prefix-shared forward under DeepSpeed ZeRO-3 with the output projection really
partitioned: two gloo processes on the CPU (tests/plugin/zero3_chunked_worker.py). Skipped where DeepSpeed is
not installed (it is a GPU extra; `DS_BUILD_OPS=0 pip install deepspeed==0.18.9` installs it on a CPU machine in
seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("zero3_chunked_worker.py")
PORT = "29741"


def test_zero3_chunked_head_gathers_the_partitioned_weight_and_matches(tmp_path):
    report = tmp_path / "zero3.json"
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",
        "PYTHONPATH": os.pathsep.join([str(WORKER.parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            PORT,
            str(WORKER),
            str(report),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(report.read_text())
    assert result["world_size"] == 2
    for case in ("untied_with_bias", "tied_embeddings_gradient_checkpointing"):
        numbers = result[case]
        assert numbers["head_weight_was_an_empty_shard"], case  # a direct read would have seen nothing
        assert numbers["params_moved"], case
        assert numbers["loss_rel_chunked_vs_unchunked"] < 1e-6, case
        for key in (
            "grad_rel_unchunked_vs_plain",
            "grad_rel_chunked_vs_plain",
            "grad_rel_chunked_vs_unchunked",
            "param_rel_after_step",
        ):
            assert numbers[key] < 1e-6, (case, key, numbers[key])
        for key in ("shared_loss_rel_vs_unchunked", "shared_grad_rel_vs_plain", "shared_grad_rel_vs_unchunked"):
            assert numbers[key] < 1e-5, (case, key, numbers[key])  # other summation order: fp32 rounding
        assert numbers["shared_param_rel_after_step"] < 1e-5, case
    digest = result["reference_digest"]
    assert digest["digest_of_partitioned_equals_plain"] and digest["digest_tells_weights_apart"]
    # why the plugin keys its own cache: TRL's hash of a ZeRO-3 model reads empty shards
    assert not digest["trl_hash_module_tells_weights_apart"]
