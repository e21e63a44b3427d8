# Thin by design: each target is one line calling axolotl or the `smaug` CLI. Hyperparameters live in
# recipes/*.yml only. The venv's bin/ goes first on PATH because `axolotl train` starts `accelerate` from PATH.
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export AXOLOTL_DO_NOT_TRACK := 1

# Knobs (all optional): CHAIN (for `make status`, `make figures`), SUITES, PAIRS, MODEL, MODELS, REF, SUITE, BATCH_SIZE, BACKEND, REPO, DRY_RUN=1,
# PUBLIC=1, JUDGE_URL, JUDGE_MODEL, MTBENCH_CONFIG, BENCHMARKS, SEED, FEW_SHOT, DATA_OUT, PYTEST_ARGS, PYTEST_WORKERS
SUITE ?= leaderboard_v1
BATCH_SIZE ?= 8
# BACKEND=vllm: lm-eval's vLLM model (tensor parallel over NUM_GPUS) from the GPU image's own venv (requirements/vllm.txt)
BACKEND ?= hf
VLLM_VENV ?= /opt/vllm
EVAL_BIN = $(if $(filter vllm,$(BACKEND)),$(VLLM_VENV)/bin/)
EVAL_BACKEND = --backend $(BACKEND) $(if $(filter vllm,$(BACKEND)),$(if $(NUM_GPUS),--num-gpus $(NUM_GPUS)))
DATA_OUT ?= outputs/data
FEW_SHOT ?= 0
SEED ?= 0
PYTEST_ARGS ?=
# Two pytest processes (pytest-xdist): most tests wait on single-threaded `axolotl train` start-ups. --dist loadfile keeps
# a file on one worker, so its module-scoped training runs are shared by its tests as before.
PYTEST_WORKERS ?= 2
PYTEST = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 pytest -n $(PYTEST_WORKERS) --dist loadfile
# MT-Bench settings (chat template, trials): eval/mtbench_smaug7b.yaml is the paper's 7B ablation (Llama-2, 10 trials).
MTBENCH_CONFIG ?= eval/mtbench.yaml

# The stage chains read these from the environment (multi-GPU / multi-node through accelerate); DRY_RUN=1 and
# SMAUG_SKIP_PREFLIGHT=1 become flags, as DRY_RUN does for `make publish`.
export NUM_GPUS NNODES NODE_RANK MASTER_ADDR MASTER_PORT SMAUG_OUTPUT_ROOT
# Experiment tracking: WANDB_PROJECT=… / MLFLOW_TRACKING_URI=… make smaug-34b (from the environment; not
# exported here, so that an unset one stays unset); TensorBoard is on by default (SMAUG_TENSORBOARD=0: off).
CHAIN_FLAGS = $(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(filter 1,$(SMAUG_SKIP_PREFLIGHT)),--skip-preflight)

.PHONY: smaug-34b smaug-72b smaug-72b-qlora smaug-7b mistral-7b-fig2 mistral-7b-fig3 mistral-7b-losses smaug-tiny \
        smaug-tiny-qlora status recipes recipes-check
.PHONY: setup lint test test-fast demo reproduce figures figures-mini eval eval-compare mtbench contamination logprobs card publish \
        data-metamath data-arc data-hellaswag data-mini bench-loss bench-data bench-status bench-memory \
        bench-memory-plan bench-shared-prefix

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml plugins/axolotl_dpop/pyproject.toml requirements/constraints.txt scripts/setup_venv.sh
	VENV=$(VENV) bash scripts/setup_venv.sh

test: setup lint
	$(PYTEST) $(PYTEST_ARGS)

lint: setup ; ruff check . && ruff format --check .

test-fast: setup
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# --- the embedded CPU default: SmolLM2-135M through data -> SFT -> DPOP -> eval -> analysis -> card -> publish dry-run
demo: setup ; HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 smaug showcase demo

# --- the paper's failure mode and its fix, on a CPU in minutes
reproduce: setup ; HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 smaug showcase reproduce

# --- training: the stage chains of recipes/chains.yaml (DRY_RUN=1 prints the plan and memory estimate) ---
smaug-34b: setup ; smaug chain run smaug-34b $(CHAIN_FLAGS)
smaug-72b: setup ; smaug chain run smaug-72b $(CHAIN_FLAGS)
smaug-72b-qlora: setup ; smaug chain run smaug-72b-qlora $(CHAIN_FLAGS)
smaug-7b: setup ; smaug chain run smaug-7b $(CHAIN_FLAGS)
mistral-7b-fig2: setup ; smaug chain run mistral-7b-fig2 $(CHAIN_FLAGS)
mistral-7b-fig3: setup ; smaug chain run mistral-7b-fig3 $(CHAIN_FLAGS)
mistral-7b-losses: setup ; smaug chain run mistral-7b-fig2 $(CHAIN_FLAGS) && smaug chain run mistral-7b-fig3 $(CHAIN_FLAGS)
smaug-tiny: setup ; smaug chain run tiny $(CHAIN_FLAGS)
smaug-tiny-qlora: setup ; smaug chain run tiny-qlora $(CHAIN_FLAGS)
status: setup ; smaug chain status $(CHAIN)
recipes: setup ; smaug recipes generate
recipes-check: setup ; smaug recipes generate --check && smaug recipes validate

# --- datasets: the released sets' pairs and their eval splits (the builders' defaults) ---
data-metamath data-arc data-hellaswag: data-%: setup
	smaug data build $* --out $(DATA_OUT)/$*_dpo.parquet --few-shot $(FEW_SHOT) --seed $(SEED) \
	  && smaug data stats $(DATA_OUT)/$*_dpo.parquet && smaug data stats $(DATA_OUT)/$*_dpo.eval.parquet

data-mini: setup
	smaug data build metamath --source data/mini/metamath.jsonl --out $(DATA_OUT)/mini/metamath_dpo.jsonl && smaug data build arc --source data/mini/arc_challenge.jsonl --out $(DATA_OUT)/mini/arc_dpo.jsonl && smaug data build hellaswag --source data/mini/hellaswag.jsonl --out $(DATA_OUT)/mini/hellaswag_dpo.jsonl

# --- evaluation ---
eval: setup
	$(EVAL_BIN)smaug eval run $(MODEL) --suite $(SUITE) --batch-size $(BATCH_SIZE) $(EVAL_BACKEND)

eval-compare: setup
	smaug eval compare $(MODELS) --suite $(SUITE) $(if $(OUT),--out $(OUT))

mtbench: setup
	$(EVAL_BIN)smaug eval mtbench --model $(MODEL) --judge-url $(JUDGE_URL) --judge-model $(JUDGE_MODEL) --config $(MTBENCH_CONFIG) $(EVAL_BACKEND)

contamination: setup
	smaug eval contamination --model $(MODEL) $(if $(REF),--ref $(REF)) $(if $(BENCHMARKS),--benchmarks $(BENCHMARKS))

# per-checkpoint scores of a chain and the paper's Figures 2-6 (SUITES: e.g. "MetaMath=gsm8k ARC=arc")
figures: setup
	smaug eval sweep $(CHAIN) $(foreach s,$(SUITES),--suite $(s)) $(foreach p,$(PAIRS),--pairs $(p))

# the claim on a task score at laptop scale: SmolLM2-135M, DPO/IPO/SLiC/DPOP, greedy exact match per checkpoint
figures-mini: setup ; HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 smaug showcase figures-mini

logprobs: setup
	smaug eval logprobs --models $(MODELS) --reference $(REF) --pairs $(PAIRS) --out $(OUT)

# --- model card and publishing ---
card: setup
	smaug release card $(MODEL) $(if $(EVAL),--eval $(EVAL))

publish: setup
	smaug release publish $(MODEL) --repo $(REPO) $(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(filter 1,$(PUBLIC)),--public)

# --- benchmarks (print measured ratios/times; not tests) ---
bench-loss: setup
	python benchmarks/bench_dpop_vs_dpo.py

bench-data: setup
	taskset -c 0 python benchmarks/bench_data_build.py

bench-status: setup ; python benchmarks/bench_chain_status.py
bench-memory: setup ; nice python benchmarks/bench_chunked_logps.py
bench-memory-plan: setup ; python benchmarks/bench_memory_plan.py
bench-shared-prefix: setup ; nice python benchmarks/bench_shared_prefix.py
