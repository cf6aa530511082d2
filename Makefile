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

# a Chromium install failure: a note locally (the browser test skips), an error under CI=true
CHROMIUM_CI_CHECK := if [ "$${CI:-}" = true ]; then echo "error: CI=true and headless Chromium is missing" >&2; exit 1; fi
CHROMIUM_FAILED := { echo "note: apt-get could not install chromium chromium-driver; the browser test will skip" >&2; \
	$(CHROMIUM_CI_CHECK); }

.PHONY: demo test install clean-venv system-packages

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt "pip>=23" "setuptools>=65,<81" wheel
	$(PIP) install -q -c constraints.txt tensorflow-cpu "numpy<2" "protobuf<5" mpich mpi4py
	$(BIN)/python -c "import horovod, horovod.tensorflow" 2>/dev/null || \
		$(HOROVOD_ENV) $(PIP) install -q --no-build-isolation -c constraints.txt horovod
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	@# headless Chromium for `connectome view --screenshot` and the browser test; only when missing
	@# and apt is usable (root or passwordless sudo); otherwise that test skips and says why. Under
	@# CI=true a failed or impossible install stops here (the test's skip would fail the run anyway)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || \
			{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } || $(CHROMIUM_FAILED); \
		elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
			sudo -n apt-get install -y -q chromium chromium-driver >/dev/null || \
			{ sudo -n apt-get update -q >/dev/null && sudo -n apt-get install -y -q chromium chromium-driver >/dev/null; } || $(CHROMIUM_FAILED); \
		else echo "note: chromium/chromium-driver not installed (no usable apt); the browser test will skip"; \
			$(CHROMIUM_CI_CHECK); fi; }
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/connectome demo

test: $(STAMP) system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Slurm + Debian's Torque-compatible qsub + munge for the real-submission test of `connectome pbs
# submit` (tests/test_pbs_submit.py starts a single-node Slurm). Installed with apt-get when missing
# and possible (root, apt-get present); otherwise a note, and that test skips with the reason.
SYSTEM_TOOLS := qsub sbatch slurmctld slurmd munged
system-packages:
	@missing=0; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || test -x /usr/sbin/$$t || missing=1; done; \
	if [ $$missing = 1 ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurm-wlm-torque munge >/dev/null 2>&1 || \
			{ apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurm-wlm-torque munge >/dev/null 2>&1; } || \
			echo "note: apt-get could not install slurm-wlm slurm-wlm-torque munge; the Slurm submission test will skip"; \
		else echo "note: slurm-wlm/slurm-wlm-torque/munge missing and apt-get unusable (not root?); the Slurm submission test will skip"; fi; \
	fi

clean-venv:
	rm -rf $(VENV)
