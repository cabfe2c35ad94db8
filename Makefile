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

# The main job: a tiny end-to-end experiment on the bundled KB: pretrain once, fine-tune
# with 0%, 50% and 100% unknown facts (a Hydra sweep; each run answers and scores its test
# sets), then gather the sweep into a table and plots. Runs again resume, not restart.
DEMO := outputs/demo
demo: install
	$(BIN)/halluc pretrain experiment=tiny model=transformer hydra.run.dir=$(DEMO)/pretrain
	$(BIN)/halluc finetune -m experiment=tiny ckpt=$(DEMO)/pretrain data.unknown_fraction=0.0,0.5,1.0 \
		hydra.sweep.dir=$(DEMO)/finetune
	$(BIN)/halluc score runs=$(DEMO)/finetune hydra.run.dir=$(DEMO)/score

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
