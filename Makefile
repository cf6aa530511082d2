# connectome — build, demo and test entry points.
#
#   make demo   create/refresh .venv, install everything, run `connectome demo`
#   make test   create/refresh .venv, install everything, run the test suite
#
# Install order matters: TensorFlow first (Horovod's build imports it), pip's MPICH + mpi4py
# (Horovod's MPI controller compiles against it), then Horovod 0.28.1 from source with MPI and
# Gloo, then this package and the rest of the stack. A stamp file makes repeat runs instant;
# it is refreshed whenever pyproject.toml, constraints.txt or this Makefile change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.connectome-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
PYTEST_ARGS ?=

HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
	HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS=-j2 \
	PATH=$(abspath $(BIN)):$$PATH

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt "pip>=23" "setuptools>=65,<81" wheel
	$(PIP) install -q -c constraints.txt tensorflow-cpu "numpy<2" "protobuf<5" mpich mpi4py
	$(BIN)/python -c "import horovod, horovod.tensorflow" 2>/dev/null || \
		$(HOROVOD_ENV) $(PIP) install -q --no-build-isolation -c constraints.txt horovod
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/connectome demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
