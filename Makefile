# Each target sets up .venv itself on a fresh clone: `make demo` and `make test` are one command each.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
BUNDLE_DIR ?= .cache/bundles/efficientnet-lite0

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $@

demo: setup
	$(BIN)/splitrt demo --bundle $(BUNDLE_DIR)

test: setup
	$(BIN)/python -m pytest -q

# `bench codecs` exports the bundle only when $(BUNDLE_DIR) holds none (as the demo does): a re-export would drop
# what was added to it since (stored profiles, trained early exits). To start afresh: rm -rf $(BUNDLE_DIR).
bench: setup
	$(BIN)/splitrt bench codecs --bundle $(BUNDLE_DIR) --images $(SHARED)/data/imagenet-sample \
		--codecs fp32,fp16 --json bench-results/codecs.json

clean:
	rm -rf $(VENV) .cache bench-results
