# Both targets create .venv if missing and install what they need into it, so they work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# Debian's chromium drives the browser tests (Playwright's own browser download cannot work offline).
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test bench bench-quick lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo needs convlens and its model readers (Keras / ONNX), not the test tools.
$(DEMO_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[import]'
	touch $(DEMO_STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

demo: $(DEMO_STAMP)
	$(BIN)/convlens demo

test: $(STAMP) $(CHROMIUM)
	CONVLENS_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf convlens-demo .pytest_cache
