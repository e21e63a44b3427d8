"""`smaug showcase figures-mini` (`make figures-mini`): the paper's claim on a task score, on a CPU.

1. SmolLM2-135M-Instruct, converted as `make demo` does; the two-step problems and MetaMath-rule pairs of
   `make reproduce` (`reproduce.prepare_data`), whose held-out problems are the lm-eval task mini_math.
2. The chain `mini`: SFT, then DPO, IPO, SLiC and DPOP at the paper's β = 0.3 and λ = 50 (DPO and DPOP with
   three seeds), every stage from the SFT model.
3. `smaug eval sweep mini`: each checkpoint's greedy exact match on the held-out problems and its log-probs of
   the held-out pairs; Figures 2, 4, 5-6 and table.md in results/figures/mini/.

Finished stages and scored checkpoints are reused: a second run redraws. Settings: recipes/mini/*.yml."""

from __future__ import annotations

import os
import time
from pathlib import Path

from smaug.common.errors import UserError
from smaug.common.files import read_jsonl
from smaug.common.paths import EVAL_CONFIG_DIR, rel, repo_path

CHAIN, SUITE = "mini", "mini_math"
HELD_OUT = EVAL_CONFIG_DIR / "tasks" / SUITE / "test.jsonl"


def figures_mini(output_root: Path | None = None, batch_size: int = 64) -> Path:
    from smaug.evaluation.figures import draw_figures, final_table
    from smaug.evaluation.sweep import sweep
    from smaug.showcase.demo_model import convert
    from smaug.showcase.reproduce import prepare_data
    from smaug.training.chains import plan_chain, run_chain

    started = time.monotonic()
    sft = plan_chain(CHAIN, output_root).stages[0]
    data = repo_path(sft.recipe["datasets"][0]["path"]).parent  # data paths are not rebased
    if prepare_data(data)["heldout_problems"] != read_jsonl(HELD_OUT):
        raise UserError(
            f"{rel(HELD_OUT)} is not the set of problems held out of training (smaug.showcase.reproduce."
            "prepare_data); write that set there, or the task would score problems the models trained on"
        )
    convert(sft.base_path)
    if run_chain(CHAIN, output_root):
        raise UserError(f"the chain {CHAIN} stopped; its message above says what to do")
    pairs = {"": data / "pairs_heldout.jsonl"}
    result = sweep(CHAIN, {"": SUITE}, pairs, output_root=output_root, batch_size=batch_size, dtype="float32")
    folder = Path(result["folder"])
    draw_figures(result, folder)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(final_table(result["points"]))
    print(f"figures, CSVs and table.md in {folder}; {(time.monotonic() - started) / 60:.1f} min (load {load})")
    return folder
