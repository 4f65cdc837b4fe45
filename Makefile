# The two commands of the README:  `make dev`  and  `make test`.
# Everything they install lands in .local/ (git-ignored); a second run reuses it.
PYTHON ?= python3
VENV   := .local/venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup dev test lint stack-down

# The same pins as the image (docker/constraints.txt): the tests run on the tree the image
# ships, and pip resolves in seconds instead of backtracking for minutes.
$(STAMP): pyproject.toml docker/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c docker/constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)
	$(BIN)/journey setup --with-helm

## Run the main job on the embedded stack: Kafka + FerretDB + local Spark + dagster dev.
dev: setup
	$(BIN)/journey dev

## Install what the tests need and run them against the real local services.
test: setup lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check journey_assets journey_assets_tests $(wildcard bench)

stack-down: $(STAMP)
	$(BIN)/journey stack down
