# Two commands on a fresh machine:  `make run`  (the app on the bundled sample)  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: run headless test install package bench screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the desktop app, with the bundled sample data set loaded
	$(BIN)/tlstudio gui --sample

headless: $(STAMP)  ## the same job without a window: scan, train, evaluate the sample
	$(BIN)/tlstudio train --sample

test: $(STAMP)  ## import rules, then the whole suite (offline, CPU)
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

screenshots: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m tlstudio.gui.screenshots docs/screenshots

package:  ## installers from a clean clone: its own CPU-torch build venv (not .venv), PyInstaller bundle, .deb
	bash packaging/build.sh

clean:
	rm -rf build dist .pytest_cache
