# Every target installs what it needs on a fresh machine (Rust toolchain and Python 3 assumed).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
MODEL ?= efficientnet-lite0
# Shared test data (the 100 ImageNet thumbnails and the course's expected answers).
DATASETS ?= $(firstword $(wildcard ../shared/datasets /work/shared/datasets) ../shared/datasets)
ORT_VERSION := 1.31.1
ORT_LIB := .ort/libonnxruntime.so.$(ORT_VERSION)
DARKNET := .cache/darknet/usr/share/darknet/data
DEFAULT_MODEL := models/efficientnet-lite0/manifest.json
# What converts a model: a change to any of these remakes the models.
MODEL_TOOLS := tools/make_model.py tools/pth.py tools/onnx_graph.py tools/efficientnet_lite.py tools/resnet18.py

.PHONY: system-packages rehearsal help venv ort model build build-aws run run-aws-emulated load timeline screenshots test test-rust test-python bench sim lint fmt clean deploy destroy

PORT ?= 8000
DATA_DIR ?= data
export PORT DATA_DIR

help:
	@echo "make run     the service on http://127.0.0.1:\$$PORT (default 8000), data in \$$DATA_DIR"
	@echo "make run-aws-emulated  the same on S3 + SQS in a local moto server (MOTO_PORT, default 5000)"
	@echo "make load    100 images, 100 connections, against make run's service"
	@echo "make timeline  docs/timeline-{100,1000}.svg: real bursts on the local stack, drawn by loadgen --plot"
	@echo "make screenshots  docs/*.png: the dashboard during a real burst, taken by the browser tests"
	@echo "make build   release binaries in target/release, without AWS support (make build-aws: with it)"
	@echo "make model   models/\$$MODEL/ (MODEL=efficientnet-lite0 | resnet18)"
	@echo "make test    every test (what CI runs)"
	@echo "make bench   classifier speed: Rust vs Python onnxruntime"
	@echo "make rehearsal  the AWS deployment on this machine under its real IAM policies (BURST=1: 100 uploads, report)"
	@echo "make sim     scaling policies compared on simulated bursts: target/sim/report.json + plots"
	@echo "make lint    rustfmt and clippy"
	@echo "make deploy  AMI (Packer) + infrastructure (Terraform) on AWS; MODEL=resnet18 REGION=us-east-1"
	@echo "make destroy terraform destroy, then the AMI"

# A venv's scripts carry its absolute path, so a moved checkout's venv is remade: the stamp names
# the folder it was made in, and a venv whose pip points elsewhere is removed first.
venv_stamp = $(1)/.installed-$(shell printf %s '$(abspath $(1))' | cksum | cut -d' ' -f1)
remake_if_moved = case "$$(head -n1 $(1)/bin/pip 2>/dev/null)" in ""|"\#!$(abspath $(1))/bin/python"*) ;; *) echo "$(1) was made in another folder: remaking it"; rm -rf $(1) ;; esac
VENV_STAMP := $(call venv_stamp,$(VENV))

$(VENV_STAMP): tools/requirements.txt
	$(call remake_if_moved,$(VENV))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	touch $@

venv: $(VENV_STAMP)

# checkov pins boto3 and friends: its own venv keeps them away from moto's.
IAC_VENV := .venv-iac
IAC_STAMP := $(call venv_stamp,$(IAC_VENV))
$(IAC_STAMP): tools/requirements-iac.txt
	$(call remake_if_moved,$(IAC_VENV))
	$(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements-iac.txt
	touch $@

# The rehearsal's IAM policy evaluator (npm @cloud-copilot/iam-simulate, pinned by its lock file).
REHEARSAL_NODE := tools/rehearsal/node_modules/.package-lock.json

# ONNX Runtime's shared library, from the same PyPI wheel the reference classifier uses.
$(ORT_LIB): $(VENV_STAMP)
	mkdir -p .ort
	cp "$$($(PY) -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.$(ORT_VERSION)")')" $@.tmp
	mv $@.tmp $@

ort: $(ORT_LIB)

models/%/manifest.json: $(VENV_STAMP) $(MODEL_TOOLS) tools/imagenet-labels.json
	$(PY) tools/make_model.py --model $* --out models/$*

model: models/$(MODEL)/manifest.json

# The local stack needs no AWS SDK: `make build` (and `make run`) compile without it. Everything
# that talks to AWS or its emulator (run-aws-emulated, deploy, test, bench) builds with it.
AWS := --features aws
# The binaries: a plain `--workspace` would also build the AWS adapters' crate.
BINARIES := -p web-tier -p app-tier -p scaler -p loadgen

build: $(ORT_LIB)
	$(CARGO) build --release $(BINARIES)

build-aws: $(ORT_LIB)
	$(CARGO) build --release $(BINARIES) $(AWS)

# The local stack in the foreground; Ctrl-C stops it, workers included.
run: build $(DEFAULT_MODEL)
	exec target/release/web-tier

# The same stack with buckets and queues on S3 + SQS in a local moto server (MOTO_PORT, default 5000).
MOTO_PORT ?= 5000
run-aws-emulated: build-aws $(DEFAULT_MODEL) $(VENV_STAMP)
	MOTO_PORT=$(MOTO_PORT) tools/run_aws_emulated.sh

# What the reference classifier says of the test images: the expected answers of `make load`.
target/expected-%.csv: models/%/manifest.json $(VENV_STAMP)
	mkdir -p target
	$(PY) tools/reference.py --model models/$* $(DATASETS)/imagenet-100/*.JPEG > $@.tmp
	mv $@.tmp $@

load: build target/expected-$(MODEL).csv
	target/release/loadgen --url http://127.0.0.1:$(PORT)/ --concurrency 100 \
		--expected target/expected-$(MODEL).csv $(DATASETS)/imagenet-100

# Real photos for the parity tests: Debian's darknet package ships a few.
$(DARKNET)/dog.jpg:
	mkdir -p .cache/darknet
	cd .cache/darknet && { apt-get download darknet 2>/dev/null || { apt-get update -qq && apt-get download darknet; }; }
	dpkg -x .cache/darknet/darknet_*.deb .cache/darknet
	touch $@

# Debian packages the tests need (chromium, packer, ...): installed first, or the run stops here
# saying which are missing.
system-packages:
	tools/system_packages.sh

test: test-rust test-python

test-rust: system-packages build-aws $(DEFAULT_MODEL)
	$(CARGO) test --release --workspace $(AWS)

test-python: system-packages build-aws $(DEFAULT_MODEL) $(DARKNET)/dog.jpg $(IAC_STAMP) $(REHEARSAL_NODE)
	DATASETS=$(abspath $(DATASETS)) DARKNET=$(abspath $(DARKNET)) CHECKOV=$(abspath $(IAC_VENV))/bin/checkov \
		$(PY) -m pytest -q -rs tools/tests tests

# The benches' data stays in one folder until the last has run (see `scratch_dir` in
# tools/local_stack.py): the last run's is deleted before the classifier bench, which creates no files.
BENCH_SCRATCH := $(abspath target/bench/scratch)
bench: build-aws $(DEFAULT_MODEL)
	rm -rf $(BENCH_SCRATCH) && sync
	$(PY) tools/bench.py --model models/efficientnet-lite0 $(DATASETS)/imagenet-100
	export IMGREC_BENCH_SCRATCH=$(BENCH_SCRATCH) && \
	$(PY) tools/bench_service.py --model models/efficientnet-lite0 $(DATASETS)/imagenet-100 && \
	$(PY) tools/bench_efficiency.py --model models/efficientnet-lite0 $(DATASETS)/imagenet-100 && \
	$(PY) tools/profile_burst.py $(DATASETS)/imagenet-100 && \
	$(PY) tools/bench_faults.py $(DATASETS)/imagenet-100 && \
	$(PY) tools/bench_web_tiers.py $(DATASETS)/imagenet-100 && \
	$(PY) tools/bench_web_tiers.py --size 1280x960 $(DATASETS)/imagenet-100 && \
	$(PY) tools/bench_overload.py $(DATASETS)/imagenet-100
	rm -rf $(BENCH_SCRATCH)

# The README's timelines (docs/timeline-100.svg, docs/timeline-1000.svg) from real local runs.
timeline: build $(DEFAULT_MODEL) $(VENV_STAMP)
	$(PY) tools/make_timeline.py --images $(DATASETS)/imagenet-100 --out docs

# The README's screenshots (docs/*.png), taken by the browser tests during a real burst.
screenshots: build-aws $(DEFAULT_MODEL) $(VENV_STAMP)
	IMGREC_SCREENSHOTS=docs DATASETS=$(abspath $(DATASETS)) $(PY) -m pytest -q tests/test_browser.py

# The deployment rehearsed here (tools/rehearsal/): every tier under its own role's policy as Terraform
# renders it, enforced with AWS's behaviours that moto lacks; the Auto Scaling groups (On-Demand, Spot)
# played by local processes. Serves until Ctrl-C (watch /dashboard); BURST=1 sends the 100 test images and reports.
$(REHEARSAL_NODE): tools/rehearsal/package.json tools/rehearsal/package-lock.json
	cd tools/rehearsal && npm ci --no-audit --no-fund --loglevel=error

rehearsal: system-packages build-aws $(DEFAULT_MODEL) $(VENV_STAMP) $(REHEARSAL_NODE)
	$(PY) tools/rehearse.py $(DATASETS)/imagenet-100 $(if $(BURST),--burst)

# The scaling simulator: every policy on every scenario, local and EC2 boot times.
sim: build
	target/release/scaler simulate --out target/sim

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets $(AWS) -- -D warnings

fmt:
	$(CARGO) fmt --all

# AWS: needs credentials, packer and terraform (see README). MODEL defaults to the course's resnet18.
DEPLOY_MODEL := $(if $(filter command line environment,$(origin MODEL)),$(MODEL),resnet18)
SMOKE_IMAGE ?= $(firstword $(wildcard $(DATASETS)/imagenet-100/test_0.JPEG) $(DARKNET)/dog.jpg)
deploy: build-aws models/$(DEPLOY_MODEL)/manifest.json $(SMOKE_IMAGE)
	MODEL=$(DEPLOY_MODEL) SMOKE_IMAGE=$(SMOKE_IMAGE) tools/deploy.sh

destroy:
	PY=$(PY) tools/destroy.sh

clean:
	rm -rf target models .ort
