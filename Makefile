# The two commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned: 2.13.0 is the CPU build these machines hold; unpinned, pip picks a CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test install install-test clean

$(BIN)/halluc:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH) -e .

install: $(BIN)/halluc

install-test: install
	$(BIN)/pip install --quiet -e '.[test]'

# The main job: a tiny end-to-end experiment on bundled data (both model families).
demo: install
	$(BIN)/halluc pretrain -m experiment=tiny model=lstm,transformer

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
