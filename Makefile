# Set-up and checks. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 (pinned in constraints.txt) is the CPU wheel; where the machine keeps it on disk, use it.
# --no-compile: not all of torch's modules at install (a minute); scripts/warm_bytecode.py then compiles those imported
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(PY) -m pip install -q --no-compile --disable-pip-version-check $(FIND_LINKS) -c constraints.txt

.PHONY: install demo test test-all lint screenshots bench bench-hessian bench-strategies bench-reference faults gpu-check clean

$(VENV)/.installed: setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[dev]"
	env -u PYTHONDONTWRITEBYTECODE $(PY) scripts/warm_bytecode.py
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/lossgrid demo --out lossgrid-demo --overwrite

# The suite as two pytest processes at once, one per core, with one torch thread each: the tests that
# start processes of their own (much of their time is spent waiting on them) beside the rest, with the
# gallery, bench and plot tests to even them out: the two halves take about as long. The slow tier is left
# out (setup.cfg); test-all runs everything, one process.
PROCESS_TESTS := tests/scripts tests/test_import.py tests/kernels tests/surface/test_distributed.py \
	tests/surface/test_surface_safety.py tests/surface/test_fault_injection.py tests/gallery tests/bench \
	tests/plot/test_plot.py
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider

test: $(VENV)/.installed
	@log=$$(mktemp); $(PYTEST) $(PROCESS_TESTS) > $$log 2>&1 & pid=$$!; trap 'kill $$pid 2>/dev/null' EXIT; \
	$(PYTEST) $(addprefix --ignore=,$(PROCESS_TESTS)); rest=$$?; \
	wait $$pid; procs=$$?; echo "--- tests that start processes ($(PROCESS_TESTS)):"; cat $$log; rm -f $$log; \
	echo "pytest exit codes: $$rest (in-process tests), $$procs (tests that start processes)"; \
	test $$rest -eq 0 -a $$procs -eq 0

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check lossgrid tests benchmarks scripts

# every kind of picture from real runs on digits, as PNG and as HTML page (photographed in headless Chromium at
# 1280x800; needs a Chromium program, e.g. apt-get install chromium), into docs/img (about 8 minutes on 2 cores)
screenshots: $(VENV)/.installed
	$(PY) scripts/screenshots.py --out docs/img

# fast modes (--samples, --adaptive, --target-se, bf16) against the reference method and the exact surface:
# ResNet-20 and an MLP, 21x21 grids; writes benchmarks/baseline/fast-surfaces-<date>.{json,md} (about an hour on 2 cores)
bench: $(VENV)/.installed
	$(PY) benchmarks/fast_surfaces.py --out-dir benchmarks/baseline

# every backend/strategy against the plain per-point loop, in memory
bench-strategies: $(VENV)/.installed
	$(PY) benchmarks/bench_surface.py --out benchmarks/results.json

# lossgrid hessian's top-3 + trace against PyHessian 0.1 on ResNet-20 (512 images); installs the bench extra
bench-hessian: $(VENV)/.installed
	$(PIP) -e ".[bench]"
	$(PY) benchmarks/hessian_pyhessian.py --out-dir benchmarks/baseline

bench-reference: $(VENV)/.installed
	$(PY) benchmarks/reference_method.py bench --images 2000 10000 --out benchmarks/results-reference.json

# On the GPU machine, with its own Python (installs nothing): make gpu-check PY=python3 OUT=DIR/gpu-check.json
# GPU-marked tests, then the ResNet-56 bench, into a report rewritten after every step (scripts/gpu_check.py);
# ARGS=--dry-run checks the harness itself on the CPU, with planted faults
gpu-check:
	$(PY) scripts/gpu_check.py $(if $(OUT),--out "$(OUT)") $(ARGS)

faults: $(VENV)/.installed
	$(PY) scripts/fault_injection.py --trials 200

clean:
	rm -rf $(VENV) lossgrid-demo *.egg-info
