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

# The main job: a small version of kbqa_unknown_sweep on the bundled KB (about 5 minutes on
# 2 CPU cores): pretrain once, fine-tune at 0%, 50% and 100% unknown facts with and without
# data cleaning (one Hydra sweep; each run answers and scores its test sets), then gather the
# sweep, verified against the KB too, into a table and plots. Run again, it resumes.
demo: install
	@echo "== [1/3] pretrain: a 4-layer Transformer reads the facts of half of the countries (~1.5 min)"
	$(BIN)/halluc pretrain experiment=demo
	@echo "== [2/3] fine-tune: 12 runs, unknown share 0 / 0.5 / 1 x cleaning off / on x 2 seeds (~8 s each)"
	$(BIN)/halluc finetune -m experiment=demo
	@echo "== [3/3] score: the sweep's table, before and after KB verification, and plots"
	$(BIN)/halluc score runs=outputs/demo/finetune mitigation=kb_verify mitigation.policy=abstain \
		hydra.run.dir=outputs/demo/score

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
