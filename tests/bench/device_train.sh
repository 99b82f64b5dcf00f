#!/bin/bash
# The bundled model's training on a lent GPU machine, run there through the device tool (README,
# "Training on a lent GPU machine"); make device-kit prepares .device/ here first.
#
#   install  the wheels in .device/wheels into .device/site, which stays on the warm machine for
#            the next call (the wheels and the data do not fit in one call's 64 MiB together)
#   train    continues the bundled model on make train-bundled's data and patches (the flags in
#            .device/data/train_args) under Keras on JAX (the machine has JAX
#            and no TensorFlow; make check-backends proves that path) for EPOCHS × STEPS batches
#            of BATCH patches, cut by WORKERS threads, validated on Dubai tile 8 after each epoch;
#            the best epoch's package and the log go to $OUT. A SIGTERM after LIMIT seconds ends
#            it early, keeping the best epoch so far; its state (build/device-train, too large to
#            come back) stays on the warm machine, and RESUME=1 continues it in the next call.
# PYTHON (default python3) and DEVICE (default gpu) let it be tried on a CPU machine.
set -euo pipefail
PYTHON=${PYTHON:-python3}
DATA=.device/data
case "${1:-}" in
install)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target .device/site .device/wheels/*.whl
    PYTHONPATH=.device/site KERAS_BACKEND=jax "$PYTHON" -c \
        'import jax, keras, rasterio; print("keras", keras.__version__, "rasterio",
         rasterio.__version__, "jax", jax.__version__, jax.devices())'
    ;;
train)
    test -f "$DATA/train_args" || { echo "$DATA is missing: carry it (make device-kit)"; exit 1; }
    read -ra data_args <"$DATA/train_args"
    mkdir -p "$OUT"
    output=build/device-train/landcover
    status=0
    KERAS_BACKEND=jax PYTHONPATH="$PWD/.device/site:$PWD" PYTHONUNBUFFERED=1 \
        timeout -s TERM "${LIMIT:-480}" "$PYTHON" -m segment_plugin.engine train "${data_args[@]}" \
        --base-model resources/models/landcover --name landcover \
        --epochs "${EPOCHS:-60}" --steps-per-epoch "${STEPS:-100}" --batch "${BATCH:-32}" \
        --workers "${WORKERS:-12}" --learning-rate "${LR:-2e-4}" \
        --patience 1000 --seed "${SEED:-47}" --device "${DEVICE:-gpu}" \
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
