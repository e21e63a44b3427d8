"""Time `smaug chain status` on a chain the size of a real run: the smaug-34b SFT stage done (2000 steps, five kept
checkpoints whose trainer_state.json each log every step), the DPOP stage resumable at step 600 of 1000. Weights
are small whole safetensors files (status reads headers, not tensors); the recipes are the real ones.
Prints the median time of status_report() in this process (5 runs), of the CLI as a subprocess and of
`python -c pass` (3 runs each), and their ratio. Run: .venv/bin/python benchmarks/bench_chain_status.py"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.numpy import save_file


def fake_model(folder: Path) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.zeros(1, dtype=np.float32)}, str(folder / "model.safetensors"))
    for name in ("config.json", "tokenizer_config.json"):
        (folder / name).write_text("{}")


def fake_checkpoint(stage, step: int, max_steps: int) -> None:
    folder = stage.output_dir / f"checkpoint-{step}"
    fake_model(folder)
    row = {"grad_norm": 0.5, "learning_rate": 5e-5, "rewards/chosen": 0.1, "logps/chosen": -50.0, "dpop/penalty": 0.0}
    history = [{"step": s, "loss": 1.0 / s, "epoch": s / max_steps, **row} for s in range(1, step + 1)]
    state = {"global_step": step, "max_steps": max_steps, "log_history": history}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def timed(function, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    from smaug.training import chains as C
    from smaug.training.chains.inputs import assess_stage, new_record

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chain = C.plan_chain("smaug-34b", root)
        sft, dpop = chain.stages
        for step in (1200, 1400, 1600, 1800, 2000):
            fake_checkpoint(sft, step, 2000)
        fake_model(sft.output_dir)
        new_record(chain, sft, []).write(sft.output_dir, done=True)
        for step in (200, 400, 600):
            fake_checkpoint(dpop, step, 1000)
        new_record(chain, dpop, [assess_stage(chain, sft, [])]).write(dpop.output_dir)

        own = timed(lambda: C.status_report(C.plan_chain("smaug-34b", root)), 5)
        command = [sys.executable, "-m", "smaug.cli", "chain", "status", "smaug-34b", "--output-root", str(root)]
        cli = timed(lambda: subprocess.run(command, check=True, capture_output=True), 3)
        bare = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 3)
        print(C.status_report(C.plan_chain("smaug-34b", root)), end="\n\n")
        print(f"own work (status_report, median of 5): {own * 1000:.0f} ms")
        print(f"CLI wall clock (median of 3):           {cli * 1000:.0f} ms")
        print(f"python -c pass (median of 3):           {bare * 1000:.0f} ms")
        print(f"CLI / bare interpreter:                 {cli / bare:.1f}x")


if __name__ == "__main__":
    main()
