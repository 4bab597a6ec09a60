# Two commands on a fresh machine:
#   make demo   creates .venv, installs, trains a class-conditional MeanFlow DiT on the real 8x8
#               digits, writes a table of quality by NFE and grids of 1- and 2-NFE samples
#   make test   creates .venv, installs, runs the fast test selection
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
TOY_DIR ?= runs/demo_toy

.PHONY: install demo demo-toy test test-slow test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) scripts/train.py --config configs/digits.py --workdir $(DEMO_DIR)
	$(PY) scripts/evaluate.py --workdir $(DEMO_DIR) --nfe 1 2 4
	@echo "table: $(DEMO_DIR)/eval.md (also eval.json); samples, one row per class: $(DEMO_DIR)/eval.png"

demo-toy: install
	$(PY) scripts/train.py --config configs/toy.py --workdir $(TOY_DIR)
	$(PY) scripts/evaluate.py --workdir $(TOY_DIR) --nfe 1 2
	$(PY) scripts/sample.py --workdir $(TOY_DIR) --nfe 1 --num 4000 --out $(TOY_DIR)/samples_1nfe.npy
	@echo "results: $(TOY_DIR)/eval.json, pictures: $(TOY_DIR)/eval.png $(TOY_DIR)/samples_1nfe.png"

test: install
	$(PY) -m pytest -q -n 2 --dist worksteal

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
