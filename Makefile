# Two commands from a fresh clone (python3 >= 3.10 and make only):
#   make run    set up, then the main job on the offline default
#   make test   set up, then the default test suite
# Set-up lives in one place (the stamp below); it reruns only when what it installs from changes.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.robench-setup
BIN    := $(VENV)/bin

.PHONY: setup run test test-slow report dist clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	# torchattacks pins requests~=2.25.1 and torchvision, which it never imports: no deps
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	# pyiqa's metadata pulls torchvision (no CPU build for this torch on the index) and every
	# learned metric's stack; robench imports only its classic metrics' modules: no deps
	$(BIN)/pip install -q --no-deps -c constraints.txt pyiqa
	touch $@

run: $(STAMP)
	$(BIN)/robench run --model birqa --defense aat --attacks all

report: $(STAMP)
	$(BIN)/robench report

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m slow

# wheel + sdist in dist/, stamped with the commit they are built from (robench --version)
dist: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt build
	git rev-parse HEAD > robench/BUILD_COMMIT
	$(BIN)/python -m build --outdir dist . ; rc=$$?; rm -f robench/BUILD_COMMIT; exit $$rc

clean-venv:
	rm -rf $(VENV)
