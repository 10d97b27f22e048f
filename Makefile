# Front door. `make demo` and `make test` each set up everything they need from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo-run
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test lint clean-demo

$(BIN)/nsnet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(BIN)/nsnet

# Build the simulated demo set in a fresh DVC workspace, run the whole pipeline, show metrics.
demo: install
	rm -rf $(DEMO)
	$(BIN)/nsnet demo-data $(DEMO) --workspace --project .
	cd $(DEMO) && git init -q && PATH=$(CURDIR)/$(BIN):$$PATH dvc init -q && \
	  git add -A && git -c user.name=demo -c user.email=demo@localhost commit -qm "demo" && \
	  PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/dvc repro
	@echo "Demo done: the tables above are in $(DEMO)/metrics/*.json;" \
	  "try: cd $(DEMO) && dvc metrics show / dvc plots show / dvc exp run -S train.lr=0.0005"

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

clean-demo:
	rm -rf $(DEMO)
