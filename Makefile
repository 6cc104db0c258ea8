# Every target has a `##` help line; `make help` (the default) lists them.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PARAMS ?= params/default.yaml

.DEFAULT_GOAL := help
.PHONY: help venv reports test lint lab render preprocess train benchmarks sweep check-reports docs-figures lock clean-reports

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(shell command -v $(PYTHON) || echo python3) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3  # pinned like the lock: an unpinned upgrade would change the installer under it
	# --no-deps: the lock is complete, and tinysoundfont's pyaudio (live playback only) does not build here.
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	# numba kernels of vaelib, librosa, umap-learn and pynndescent compiled once into their caches (~40 s on 2 cores), not in the first test or report
	$(PY) -m vaelib.cli.jit_cache
	$(VENV)/bin/nbstripout --install --attributes .gitattributes 2>/dev/null || true
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the lock (once)

reports: $(STAMP) ## render the embedded dataset, train, and execute all reports into reports/default/
	$(VENV)/bin/vaelib run --params $(PARAMS)

test: $(STAMP) ## run ruff, the import contract (import-linter) and the test suite
	$(VENV)/bin/ruff check vaelib tests benchmarks scripts notebooks
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP) ## ruff and the import contract only
	$(VENV)/bin/ruff check vaelib tests benchmarks scripts notebooks
	$(VENV)/bin/lint-imports --no-cache

lab: $(STAMP) ## open JupyterLab on notebooks/
	$(VENV)/bin/jupyter lab notebooks/

render: $(STAMP) ## render the embedded GM dataset of $(PARAMS)
	$(VENV)/bin/vaelib render --params $(PARAMS)

preprocess: $(STAMP) ## render if missing, split and cache features of $(PARAMS)
	$(VENV)/bin/vaelib preprocess --params $(PARAMS)

train: $(STAMP) ## train the model of $(PARAMS)
	$(VENV)/bin/vaelib train --params $(PARAMS)

benchmarks: $(STAMP) ## run benchmarks/*.py, writing benchmarks/results/*.json
	$(PY) benchmarks/bench_preprocess.py
	$(PY) benchmarks/bench_preprocess.py --params params/plain.yaml --out benchmarks/results/preprocess_plain.json
	$(PY) benchmarks/bench_train.py --skip-channels
	$(PY) benchmarks/bench_train.py --params params/plain.yaml --out benchmarks/results/train_plain.json
	$(PY) benchmarks/bench_augment.py

sweep: $(STAMP) ## run the planned experiments of params/experiments/ and their comparison report
	$(VENV)/bin/vaelib sweep params/experiments/*.yaml

check-reports: $(STAMP) ## load every page under reports/ in headless Chromium and fail on broken ones
	$(VENV)/bin/vaelib check --root reports

docs-figures: $(STAMP) ## copy the docs figures from reports/default/ (after make reports) into docs/figures/
	$(PY) scripts/docs_figures.py --run reports/default --out docs/figures

lock: $(STAMP) ## rewrite requirements.lock from the venv (after a deliberate upgrade)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-reports: ## delete generated reports (keeps reports/README.md)
	find reports -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
