# Set-up and the two everyday commands. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch for set-up and CI; GPU users install the torch they like (the package needs torch>=2.2).
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	echo "$(TORCH_PIN)" > $(VENV)/torch-pin.txt
	$(PY) -m pip install -q -e ".[test]" -c $(VENV)/torch-pin.txt
	@# pty-chi (iterative baseline) on a CPU torch: without its torchvision requirement, whose
	@# PyPI wheels are CUDA builds that fail to import next to the CPU torch (docs/iterative.md)
	$(PY) -m pip install -q --no-deps "ptychi==2.2.0"
	$(PY) -m pip install -q -e ".[iterative-cpu]" -c $(VENV)/torch-pin.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/ptypinn demo -o runs/demo

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
