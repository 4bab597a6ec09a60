# Two commands on a fresh machine:
#   make demo   creates .venv, installs, trains the toy MeanFlow model, writes results and pictures
#   make test   creates .venv, installs, runs the fast test selection
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-slow test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) scripts/train.py --config configs/toy.py --workdir $(DEMO_DIR)
	$(PY) scripts/evaluate.py --workdir $(DEMO_DIR) --nfe 1 2
	$(PY) scripts/sample.py --workdir $(DEMO_DIR) --nfe 1 --num 4000 --out $(DEMO_DIR)/samples_1nfe.npy
	@echo "results: $(DEMO_DIR)/eval.json, pictures: $(DEMO_DIR)/eval.png $(DEMO_DIR)/samples_1nfe.png"

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
