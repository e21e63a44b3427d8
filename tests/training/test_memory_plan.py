"""The memory plan: host RAM and GPU needs stated once (recipes/chains.yaml), recomputed by the dry run and
compared with it; the READMEs show the same figures; and the estimate's parts against a measured tiny run
(the full comparison over ZeRO settings is benchmarks/bench_memory_plan.py, table in benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import pytest
import torch
import yaml

from smaug.common.paths import RECIPES_DIR, REPO_ROOT
from smaug.training import chains as C, memory


def _host_gb(name: str) -> float:
    """The largest host-RAM estimate per node over the chain's stages, at the chain's own GPU count."""
    plan = C.plan_chain(name)
    launch = C.Launch.from_env(plan.hardware, {})
    worst = 0.0
    for stage in plan.stages:
        shape = memory.model_shape(str(stage.recipe["base_model"])) or memory.KNOWN_MODELS["jondurbin/bagel-34b-v0.2"]
        est = memory.estimate(stage.recipe, shape, launch.world_size, launch.num_gpus, REPO_ROOT)
        worst = max(worst, est.host_gib * memory.GIB / 1e9)
    return worst


def test_chains_state_the_host_ram_the_estimate_needs_and_not_much_more():
    for name, spec in C.load_chains().items():
        hardware = spec["hardware"]
        if hardware.get("accelerator") != "cuda":
            continue
        need = _host_gb(name)
        if need == 0:
            assert "host_ram_gb" not in hardware, f"{name}: nothing is offloaded, so no host RAM figure"
        else:
            assert need <= hardware["host_ram_gb"] <= 1.1 * need, f"{name}: estimate {need:.0f} GB"


def test_72b_host_ram_counts_fp32_gradients_next_to_the_optimizer_states(tmp_path):
    recipe = yaml.safe_load((RECIPES_DIR / "smaug72b_dpop.yml").read_text())
    shape = memory.KNOWN_MODELS[recipe["base_model"]]
    est = memory.estimate(recipe, shape, 8, 8, REPO_ROOT)
    host = dict(est.host_rows)
    per_param = est.host_gib * memory.GIB / shape.params
    # bf16 gradient partition 2 + fp32 gradient copy 4 + fp32 master, m, v 12; the bf16 weights stay on the GPUs
    assert per_param == pytest.approx(18) and host["gradients, fp32 copy for the CPU optimizer (4 B/param)"] > 0
    assert 1.25e12 < est.host_gib * memory.GIB < 1.35e12  # ~1.30 TB per 8-GPU node, not the 1.2 TB once stated
    assert est.parts["gradients"] == (0.0, 6 * shape.params / 8)
    # The recipe's own plan needs no parameter offload: ~30 GiB of an 80 GB GPU (the weights 16.8 of it).
    assert 29 < est.total_gib < 32 and dict(est.rows)["weights, bf16 (2 B/param)"] == pytest.approx(16.83, abs=0.01)
    # With parameter offload the bf16 weights go to the host too (+ 2 B), and a reference model's (+ 2 B).
    zero = json.loads((REPO_ROOT / recipe["deepspeed"]).read_text())
    zero["zero_optimization"]["offload_param"] = {"device": "cpu"}
    (tmp_path / "offload_param.json").write_text(json.dumps(zero))
    offload = {**recipe, "deepspeed": str(tmp_path / "offload_param.json")}
    assert memory.estimate(offload, shape, 8, 8, REPO_ROOT).host_gib * memory.GIB / shape.params == pytest.approx(20)
    with_reference = memory.estimate({**offload, "precompute_ref_log_probs": False}, shape, 8, 8, REPO_ROOT)
    assert with_reference.host_gib * memory.GIB / shape.params == pytest.approx(22)


def test_the_plan_knows_the_shared_forward():
    """dpop_shared_prefix implies the chunked head and adds the tree mask; the activations stay counted for the
    longest pair, which may share nothing but a short prompt."""
    recipe = yaml.safe_load((RECIPES_DIR / "smaug72b_dpop.yml").read_text())
    shape = memory.KNOWN_MODELS[recipe["base_model"]]
    unshared = {**recipe, "dpop_shared_prefix": None, "dpop_chunked_logps": None}
    plans = {name: memory.estimate(r, shape, 8, 8, REPO_ROOT) for name, r in (("shared", recipe), ("no", unshared))}
    shared, plain = (dict(plans[k].rows) for k in ("shared", "no"))
    assert any(label.startswith("chunked head") for label in shared) and not any("chunked" in k for k in plain)
    mask = shared["tree attention mask (1 x 4096^2: bool, + bf16 in SDPA per layer kept)"]
    assert mask * memory.GIB == 4096**2 * (1 + 2)  # one layer's bf16 copy under gradient checkpointing
    assert plans["shared"].parts["activations"][0] == pytest.approx(plans["no"].parts["activations"][0] + 3 * 4096**2)
    assert any("dpop_shared_prefix" in line for line in plans["shared"].assumptions)


def test_dry_run_compares_host_ram_with_chains_yaml(capsys, tmp_path):
    assert C.run_chain("smaug-72b", dry_run=True, env={}) == 0
    out = capsys.readouterr().out
    assert "hardware: 8x H100 80 GB, ~1.4 TB host RAM" in out
    assert re.search(r"host RAM per node for offloaded states \(estimate\): 13\d\d GB .*states 1400 GB: ok", out)
    chains = yaml.safe_load((RECIPES_DIR / "chains.yaml").read_text())
    small = {"smaug-72b": {**chains["smaug-72b"], "hardware": {**chains["smaug-72b"]["hardware"], "host_ram_gb": 1200}}}
    small["smaug-72b"]["stages"] = [str(RECIPES_DIR / s) for s in small["smaug-72b"]["stages"]]
    (tmp_path / "chains.yaml").write_text(yaml.safe_dump(small))
    plan = C.plan_chain("smaug-72b", chains_file=tmp_path / "chains.yaml")
    assert "MORE than the 1200 GB recipes/chains.yaml states" in C.describe(plan, C.Launch.from_env(plan.hardware, {}))


@pytest.mark.parametrize("readme", ["README.md", "recipes/README.md"])
def test_readme_tables_show_the_hardware_chains_yaml_states(readme):
    """A table row that names a GPU chain's make target or one of its recipes shows that chain's hardware as
    recipes/chains.yaml states it (the READMEs write "8×" for "8x")."""
    rows = [line for line in (REPO_ROOT / readme).read_text().splitlines() if line.startswith("| `")]
    checked = 0
    for name, spec in C.load_chains().items():
        if spec["hardware"].get("accelerator") != "cuda":
            continue
        names = {f"`make {name}`"} | {f"`{stage}`" for stage in spec["stages"]}
        for row in rows:
            if any(n in row for n in names):
                assert C.hardware_text(spec["hardware"]).replace("x ", "× ") in row, f"{readme}: {row}"
                checked += 1
    assert checked >= 3


def _bench():
    if "bench_memory_plan" not in sys.modules:  # a module of benchmarks/, not a package: load it by path
        spec = importlib.util.spec_from_file_location(
            "bench_memory_plan", REPO_ROOT / "benchmarks" / "bench_memory_plan.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["bench_memory_plan"]


def test_estimate_matches_a_measured_tiny_run_part_by_part(tmp_path, monkeypatch):
    """One process, no DeepSpeed, a tiny Llama (the benchmark's method on its smallest case, in ~10 s)."""
    bench = _bench()
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # measure() sets them; restored afterwards
    threads = torch.get_num_threads()
    case = bench.Case("tiny", hidden=128, layers=2, zero=None, world=1, vocab=1031, seq=96, micro=1)
    try:
        bench.measure(case, 0, 0, tmp_path)
    finally:
        torch.set_num_threads(threads)
    measured = yaml.safe_load((tmp_path / "rank0.json").read_text())
    estimate = bench.estimate_parts(case, measured["params"])
    for part in bench.PARTS:
        assert estimate[part] == pytest.approx(measured[part], rel=bench.TOLERANCE), part
