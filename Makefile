# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= results/ml-100k
MODELS ?= pop,recent-pop,item-knn,stan,v-sknn,bpr,sasrec,nmrn-faithful,nmrn-memory,nmrn

.PHONY: install demo test lint bench clean

# constraints.txt pins the exact versions of this project's runs (the CPU build of torch among
# them); the library's own requirements in pyproject.toml are ranges.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,parquet,serve]'
	touch $(STAMP)

install: $(STAMP)

# The main job, end to end on real data: environment, MovieLens-100K, evaluation, table + plots.
demo: $(STAMP)
	$(BIN)/nmrn data fetch ml-100k
	$(BIN)/nmrn evaluate --dataset ml-100k --models $(MODELS) --protocol both \
		--base-fraction 0.5 --blocks 5 --chunk-size 100,1000 --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_speed.py

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
