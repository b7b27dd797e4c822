# convoy — the commands a newcomer needs: `make serve`, `make test`, `make demo`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-8)

.PHONY: serve test demo weights lint bench clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/convoy serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out demo-out

weights: $(STAMP)
	$(BIN)/convoy train all --threads 2

lint: $(STAMP)
	$(BIN)/ruff check service workers models tests

bench: $(STAMP)
	$(BIN)/convoy bench all

clean:
	rm -rf .convoy demo-out .pytest_cache
