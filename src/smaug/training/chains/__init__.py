"""Stage chains: run a list of axolotl recipes in order (`make smaug-34b` = `smaug chain run smaug-34b`).

recipes/chains.yaml names the stages of each chain and the hardware it needs. The plan is refused before
anything runs (also in `--dry-run`) when stages share or nest output folders, a stage starts from its own
output or a later stage's (a cycle), or a setting would reverse or break training (β <= 0, NaN/inf, a
non-positive step count, batch size or learning rate, a port out of range…); every stage is validated with
axolotl's own validator (and the DPOP plugin's) before the first one trains.

For every stage, one function (`training.state.assess`, through `assess_chain`) decides what it is — done,
stale (its recipe or what it consumed changed since), finished but unmarked, resumable, new — and both the
run and `smaug chain status` act on that. A run
  - takes a lock on every folder it writes (`training.lock`), so a second run on the same outputs stops at once;
  - skips done stages, and stops before any training if a stage is stale (with the command to retrain it);
  - finishes a stage whose training had finished (killed before its done-marker) without training again;
  - otherwise runs `axolotl train RECIPE --launcher accelerate -- ...` through `training.runner`, resuming a
    killed stage from its last complete checkpoint (half-written ones are set aside first);
  - merges a LoRA stage (`axolotl merge-lora` into `<output_dir>/merged`) before marking it done, so a later
    stage, `make eval` and `smaug release card` start from full weights;
  - writes a done-marker recording what the stage consumed (`training.state`).
On several nodes (NNODES > 1, outputs on shared storage, e.g. `scripts/slurm/smaug.sbatch`) every node runs the
same chain; only node 0 sets checkpoints aside, merges and writes records and done-markers, and the other
nodes wait for node 0's marker before they go on to the next stage.
The chain adds to each run, through axolotl's own config keys on the command line (the recipes stay as they
are, and these keys are not part of a recipe's hash): TensorBoard logging under the stage's folder, W&B or
MLflow when WANDB_PROJECT or MLFLOW_TRACKING_URI is set, and a prepared-dataset folder per set of inputs.
Before any GPU time, `training.preflight` compares the chain's `hardware:` with the GPUs torch finds;
`--dry-run` prints the plan, the exact commands and a per-GPU memory estimate (`training.memory`).

The package, in the order a run goes through it: `plan` (chains.yaml, the stages, folder checks), `checks`
(settings and axolotl's validation of every stage), `inputs` (what each stage consumes), `progress` (each
stage's state and the next step), `commands` (what a stage runs), `report` (dry run and status), `run`.
"""

from smaug.training.chains.checks import check_settings, validate_stages
from smaug.training.chains.commands import merge_command, stage_env, tracking_settings, train_command
from smaug.training.chains.inputs import consumed_paths, missing_inputs, prepared_folder, stage_inputs
from smaug.training.chains.plan import (
    CHAINS_FILE,
    DEFAULT_OUTPUT_ROOT,
    RESOLVED_CONFIG,
    STAGE_LOG,
    Chain,
    ChainStage,
    Launch,
    load_chains,
    plan_chain,
)
from smaug.training.chains.progress import NextStep, assess_chain, assess_stage, json_settings, next_step, state_text
from smaug.training.chains.report import describe, host_ram_check, status_report
from smaug.training.chains.run import run_chain, stage_log, wait_for_node0, write_merged_provenance
from smaug.training.checkpoints import complete_checkpoints, set_aside_incomplete_checkpoints
from smaug.training.preflight import detect_gpus, hardware_text, preflight

__all__ = [
    "CHAINS_FILE",
    "DEFAULT_OUTPUT_ROOT",
    "RESOLVED_CONFIG",
    "STAGE_LOG",
    "Chain",
    "ChainStage",
    "Launch",
    "NextStep",
    "assess_chain",
    "assess_stage",
    "check_settings",
    "complete_checkpoints",
    "consumed_paths",
    "describe",
    "detect_gpus",
    "hardware_text",
    "host_ram_check",
    "json_settings",
    "load_chains",
    "merge_command",
    "missing_inputs",
    "next_step",
    "plan_chain",
    "preflight",
    "prepared_folder",
    "run_chain",
    "set_aside_incomplete_checkpoints",
    "stage_env",
    "stage_inputs",
    "stage_log",
    "state_text",
    "status_report",
    "tracking_settings",
    "train_command",
    "validate_stages",
    "wait_for_node0",
    "write_merged_provenance",
]
