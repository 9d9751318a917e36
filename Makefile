# Two entry points: `make play` and `make test`. Both set up .venv on first use.
# On a machine without an NVIDIA GPU the set-up pins the local CPU torch wheel
# (a bare `torch` requirement would pull a multi-GB CUDA build); with a GPU it keeps
# whatever torch the user has, or installs the default build.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CPU_TORCH ?= torch==2.13.0
# glibc malloc tuning: removes a page-fault storm worth up to 40 % on the model's hot path.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 1073741824

.PHONY: play test setup system-deps clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: keeping/installing a CUDA torch"; \
	  $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch; \
	else \
	  echo "no GPU: pinning the CPU wheel $(CPU_TORCH)"; \
	  $(PY) -m pip install -q "$(CPU_TORCH)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# ViZDoom's sound needs Debian's libopenal1 (without it recorded audio is silently zero);
# the C++ engine client (engine_bridge/clients/cpp) builds with CMake against libzmq + cppzmq + msgpack-cxx;
# xvfb, x11-apps (xwd), x11-utils (xwininfo): the player test captures its window from an X server.
SYSTEM_PKGS := libopenal1 cmake g++ pkg-config libzmq3-dev cppzmq-dev libmsgpack-cxx-dev xvfb x11-apps x11-utils
system-deps:
	@missing=$$(for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq $$missing; \
	  else echo "warning: missing system packages ($$missing) cannot be installed here: ViZDoom audio may be silent, the C++ client will not build"; fi; \
	fi

play: system-deps setup
	$(VENV)/bin/worldsim play $(ARGS)

test: system-deps setup
	$(PY) -m pytest -q $(ARGS)

clean-venv:
	rm -rf $(VENV)
