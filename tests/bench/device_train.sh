#!/bin/bash
# The bundled model's training on a lent GPU machine, run there through the device tool (docs/training.md,
# "Training on a lent GPU machine"); make device-kit prepares .device/ here first.
#
#   install  the wheels in .device/wheels into .device/site, which stays on the warm machine for
#            the next call (the wheels and the data do not fit in one call's 64 MiB together)
#   train    continues the bundled model on make train-bundled's data and patches (the flags in
#            .device/data/train_args) under Keras on BACKEND, torch by default (the machine has
#            torch and JAX, no TensorFlow; make check-backends proves both) for EPOCHS × STEPS batches
#            of BATCH patches, cut by WORKERS threads, validated on Dubai tile 8 after each epoch;
#            the best epoch's package and the log go to $OUT. A SIGTERM after LIMIT seconds ends
#            it early, keeping the best epoch so far; its state (build/device-train, too large to
#            come back) stays on the warm machine, and RESUME=1 continues it in the next call.
# PYTHON (default python3) and DEVICE (default gpu) let it be tried on a CPU machine; BACKEND
# (torch or jax) picks the Keras backend.
set -euo pipefail
PYTHON=${PYTHON:-python3}
# torch: the version make check-backends trains with here (2.11.0) is the image's; its JAX
# (0.11.2) needs Python 3.12, which this project's machine does not have
export KERAS_BACKEND=${BACKEND:-torch}
DATA=.device/data
case "${1:-}" in
install)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target .device/site .device/wheels/*.whl
    PYTHONPATH=".device/site:$PWD" "$PYTHON" -c 'import keras, rasterio
from segment_plugin.engine.devices import describe, select_device
print("rasterio", rasterio.__version__, describe(select_device("auto")))'
    ;;
train)
    test -f "$DATA/train_args" || { echo "$DATA is missing: carry it (make device-kit)"; exit 1; }
    read -ra data_args <"$DATA/train_args"
    mkdir -p "$OUT"
    output=build/device-train/landcover
    status=0
    PYTHONPATH="$PWD/.device/site:$PWD" PYTHONUNBUFFERED=1 \
        timeout -s TERM "${LIMIT:-480}" "$PYTHON" -m segment_plugin.engine train "${data_args[@]}" \
        --base-model resources/models/landcover --name landcover \
        --epochs "${EPOCHS:-60}" --steps-per-epoch "${STEPS:-100}" --batch "${BATCH:-32}" \
        --workers "${WORKERS:-12}" --learning-rate "${LR:-2e-4}" \
        --patience 1000 --seed "${SEED:-47}" --device "${DEVICE:-gpu}" --train-batchnorm \
        --output "$output" ${RESUME:+--resume} >>"$OUT/train.log" 2>&1 || status=$?
    grep -v '%\]' "$OUT/train.log" | tail -n 60  # the epochs' metrics, not each batch
    if [ -f "$output/model.keras" ]; then
        mkdir -p "$OUT/landcover" && cp "$output/model.keras" "$output/model.json" "$OUT/landcover/"
    fi
    exit "$status"
    ;;
*)
    echo "usage: $0 install|train" >&2
    exit 2
    ;;
esac
