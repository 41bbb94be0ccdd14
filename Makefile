# Set-up and entry points. `make run` and `make test` each install into .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch comes from this pin unless the user's environment already has a torch.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install run test test-fast chaos clean

# A torch already in $(PYTHON) is reused (the venv then sees system site-packages); otherwise the pin.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || { $(PYTHON) -c "import torch" 2>/dev/null && $(PYTHON) -m venv --system-site-packages $(VENV) || $(PYTHON) -m venv $(VENV); }
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) studies/grouping.py

test: install
	$(PY) -m pytest -q -n 3 --dist loadgroup --durations=25

test-fast: install
	$(PY) -m pytest -q -n 3 --dist loadgroup -m "not slow"

# The chaos study (tests/faults/test_chaos.py) with three schedule seeds; `test` runs seed 0.
chaos: install
	$(PY) -m pytest -q tests/faults/test_chaos.py --chaos-seeds 0,1,2

clean:
	rm -rf $(VENV) .pytest_cache
