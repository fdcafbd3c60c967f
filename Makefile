# `make demo` and `make test` do all set-up on a fresh machine: the venv in .venv, the package in it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# The demo, a small version of the notes' refinery finding (S6: it helps once the first model has
# converged): a ResNet-8 teacher trained for 3 epochs on all 60,000 Fashion-MNIST images (no pad-crop:
# at 3 epochs it only slows convergence), then one label-refinery generation on the same schedule,
# taught by its soft predictions. About 5 minutes on 2 CPU cores.
DEMO_RECIPE ?= baseline:model=resnet8,crop_pad=0+refine:gens=1
DEMO_ARGS ?= --dataset fashion-mnist --epochs 3

.PHONY: install demo test fashion-mnist gpu-carry clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist package, where the machine allows it; otherwise `recipe` falls back
# to torchvision's download.
fashion-mnist:
	@test -d $(FASHION_MNIST) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; } || \
	  echo "Debian's dataset-fashion-mnist is not installed here; recipe will try torchvision's download"

demo: install fashion-mnist
	$(BIN)/recipe run $(DEMO_RECIPE) $(DEMO_ARGS)
	@echo "CIFAR-10 next: $(BIN)/recipe run $(DEMO_RECIPE) --data PATH  (a cifar-10-batches-py folder, train/ and test/ image folders, or a .tar.gz of either)"

test: install
	$(BIN)/python -m pytest -q

# What a GPU call carries (`carry: [".whl", ".gpu"]`; both ignored by git, 64 MiB at most): wheels of what the GPU
# machine's image lacks (it has Python 3.12, torch, torchvision, numpy, pillow, timm and rich), at the versions
# installed here, which bench/gpu_session.sh's setup installs; and the CIFAR-10 archive it reads from .gpu/.
GPU_WHEELS ?= fastai fastcore fastdownload fastprogress fasttransform plum-dispatch beartype python-fasthtml \
	starlette itsdangerous python-multipart httpx httpcore truststore pytest pluggy iniconfig pytest-timeout
CIFAR10 ?= ../shared/data/cifar10-jpeg.tar.gz

gpu-carry: install
	rm -rf .whl && mkdir -p .whl .gpu
	$(BIN)/python -m pip freeze --all | $(BIN)/python -c "import sys; want = {w.lower() for w in sys.argv[1:]}; \
	  print(*(l.strip() for l in sys.stdin if l.partition('==')[0].lower() in want), sep='\n')" $(GPU_WHEELS) > .whl/pins.txt
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version 3.12 --platform manylinux2014_x86_64 -d .whl -r .whl/pins.txt
	cp $(CIFAR10) .gpu/cifar10-jpeg.tar.gz
	@du -sh .whl .gpu

clean:
	rm -rf $(VENV) *.egg-info
