# convoy — the commands a newcomer needs: `make serve`, `make test`, `make demo`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-8)

.PHONY: serve test demo weights lint bench clean install browser screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/convoy serve --host 127.0.0.1 --port 8000

test: $(STAMP) browser
	$(BIN)/pytest -q -p no:cacheprovider

# The studio's browser tests drive Debian's chromium through playwright (never a downloaded
# browser). Installed here when missing and we may (root or password-less sudo).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	  else echo "chromium is missing: the browser tests skip (apt-get install chromium)"; fi; }

screenshots: $(STAMP) browser
	$(BIN)/python scripts/screenshots.py --out docs/studio

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
