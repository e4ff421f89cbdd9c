# neulig: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: help venv run test test-full lint ui bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	bash .ci/install.sh $(VENV)
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install neulig with its dev extras

run: $(STAMP)  ## run the embedded default experiment (Portland on the tiny backbone); ARGS=overrides
	$(PY) -m neulig.run $(ARGS)

test: $(STAMP)  ## run the default test suite (no slow or GPU tests)
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff (configuration in pyproject.toml)
	$(VENV)/bin/ruff check neulig tests benchmarks hydra_plugins

test-full: $(STAMP)  ## run every test, slow ones included
	$(PY) -m pytest -q -m 'not gpu'

# One uvicorn worker and no GenAI job runner (huey consumers): health in ~8 s instead of ~40 s on 2 cores,
# 2 processes instead of 15, and Ctrl-C leaves nothing behind. `make ui PORT=5001` picks another port.
ui: $(STAMP)  ## MLflow UI on the project's store at http://127.0.0.1:5000 (Ctrl-C stops it)
	@mkdir -p outputs
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db \
		--host 127.0.0.1 --port $(or $(PORT),5000) --workers 1

bench: $(STAMP)  ## every performance figure at a size for the device (benchmarks/all.py); ARGS='--device cpu --budget 300'
	$(PY) benchmarks/all.py $(ARGS)

clean:  ## remove outputs (cache, runs, MLflow store)
	rm -rf outputs multirun
