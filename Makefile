PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test sweep bench docs lint clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "from onebyone._torchvision_ops import write_pth; write_pth()"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/onebyone demo --force

test: $(STAMP)
	$(BIN)/python -m pytest -q

sweep: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_timm_sweep.py -m "sweep or not sweep"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_op.py

docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist site src/*.egg-info
