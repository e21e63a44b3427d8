"""Time `smaug chain status` on a chain the size of a real run: the smaug-34b SFT stage done (2000 steps, five
kept checkpoints whose trainer_state.json each log every step), the DPOP stage resumable at step 600 of 1000.

Weights are small files with valid safetensors headers (status reads headers, not tensors); the recipes are
the real ones, so the DeepSpeed JSON they read is hashed. Three numbers:
  own work:     status_report() in this process (plan + state of every stage + text), median of 5
  CLI:          `smaug chain status smaug-34b --output-root DIR` as a subprocess, wall clock, median of 3
  interpreter:  `python -c pass` for comparison (what the CLI pays before any of our code runs)
Run:  .venv/bin/python benchmarks/bench_chain_status.py
Target (issue 14): own work < 1 s.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fake_weights(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    (folder / "config.json").write_text("{}")


def fake_checkpoint(stage, step: int, max_steps: int) -> None:
    folder = stage.output_dir / f"checkpoint-{step}"
    fake_weights(folder)
    history = [
        {
            "step": s,
            "loss": 1.0 / s,
            "grad_norm": 0.5,
            "learning_rate": 5e-5,
            "epoch": s / max_steps,
            "rewards/chosen": 0.1,
            "rewards/rejected": -0.1,
            "logps/chosen": -50.0,
            "logps/rejected": -60.0,
            "dpop/penalty": 0.0,
            "dpop/active_fraction": 0.0,
        }
        for s in range(1, step + 1)
    ]
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "max_steps": max_steps, "log_history": history})
    )


def main() -> None:
    from smaug.training import chains as C
    from smaug.training import state as S

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chain = C.plan_chain("smaug-34b", root)
        sft, dpop = chain.stages
        for step in (1200, 1400, 1600, 1800, 2000):
            fake_checkpoint(sft, step, 2000)
        fake_weights(sft.output_dir)
        record = S.stage_record(
            recipe_name=sft.name,
            digest=sft.digest,
            settings=C._json_settings(sft),
            run_id=S.new_run_id(),
            inputs=C.stage_inputs(chain, sft, [], None),
            output_dir=sft.output_dir,
            prepared=None,
        )
        S.write_done_marker(sft.output_dir, record)
        sft_state = C.assess_stage(chain, sft, [])
        for step in (200, 400, 600):
            fake_checkpoint(dpop, step, 1000)
        inputs = C.stage_inputs(chain, dpop, [sft_state], None)
        S.write_inputs_record(
            dpop.output_dir,
            S.stage_record(
                recipe_name=dpop.name,
                digest=dpop.digest,
                settings=C._json_settings(dpop),
                run_id=S.new_run_id(),
                inputs=inputs,
                output_dir=dpop.output_dir,
                prepared=str(C.prepared_folder(dpop, inputs)),
            ),
        )

        own = []
        for _ in range(5):
            started = time.perf_counter()
            text = C.status_report(C.plan_chain("smaug-34b", root))
            own.append(time.perf_counter() - started)
        cli, bare = [], []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "smaug.cli", "chain", "status", "smaug-34b", "--output-root", str(root)],
                check=True,
                capture_output=True,
            )
            cli.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - started)
        print(text)
        print()
        print(f"own work (status_report, median of 5): {statistics.median(own) * 1000:.0f} ms")
        print(f"CLI wall clock (median of 3):           {statistics.median(cli) * 1000:.0f} ms")
        print(f"python -c pass (median of 3):           {statistics.median(bare) * 1000:.0f} ms")
        print(f"CLI / bare interpreter:                 {statistics.median(cli) / statistics.median(bare):.1f}x")


if __name__ == "__main__":
    main()
