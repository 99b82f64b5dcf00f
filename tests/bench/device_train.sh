#!/bin/bash
# The bundled model's training on a lent GPU machine, run there through the device tool (docs/training.md,
# "Training on a lent GPU machine"); make device-kit prepares .device/ here first.
#
#   install  the wheels in .device/wheels into .device/site, which stays on the warm machine for
#            the next call (the wheels and the data do not fit in one call's 64 MiB together)
#   probe    (multi-source kit) one short epoch on the sources already carried: the patches a
#            second it trains, kept in build/device-probe/steps_per_s for train's STEPS
#   train    continues the Dubai base (tests/models/landcover-dubai: the bundled model's first two
#            stages, make train-dubai-base) on the kit's data and patches (the flags in
#            $KIT/train_args; KIT is .device/data, make device-kit, or .device/msdata,
#            make device-kit-multisource) under Keras on BACKEND, JAX by default (the machine has
#            torch and JAX, no TensorFlow; make check-backends proves both) for EPOCHS × STEPS batches
#            of BATCH patches, cut by WORKERS threads, validated on Dubai tile 8 after each epoch;
#            the best epoch's package and the log go to $OUT. A SIGTERM after LIMIT seconds ends
#            it early, keeping the best epoch so far; its state (build/device-train, too large to
#            come back) stays on the warm machine, and RESUME=1 continues it in the next call.
#            Batch normalisation stays frozen, as in make train-multisource. STAGE=2 runs its
#            second stage instead: from stage 1's best on the warm machine, with the flags of
#            $KIT/stage2_args (make train-multisource's TRAIN_MS_CONT_ARGS: each image's contrast
#            stretched), LR 1e-4 and 3 epochs unless given.
# PYTHON (default python3) and DEVICE (default gpu) let it be tried on a CPU machine; BACKEND
# (torch or jax) picks the Keras backend.
set -euo pipefail
PYTHON=${PYTHON:-python3}
# jax: under torch the multi-source training fell apart on the GPU and trails TensorFlow and JAX
# on this project's CPU (docs/training.md); the image's JAX is 0.11.2, checked here with 0.10.2
export KERAS_BACKEND=${BACKEND:-jax}
DATA=${KIT:-.device/data}
PROBE=build/device-probe
case "${1:-}" in
install)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target .device/site .device/wheels/*.whl
    PYTHONPATH=".device/site:$PWD" "$PYTHON" -c 'import keras, rasterio
from segment_plugin.engine.devices import describe, select_device
print("rasterio", rasterio.__version__, describe(select_device("auto")))'
    ;;
probe)
    mkdir -p "$OUT" "$PROBE"
    # the sources whose folders are here already (the kit travels in several calls)
    "$PYTHON" - "$DATA" "$PROBE/sources.json" <<'PY'
import json, sys, pathlib
kit, out = pathlib.Path(sys.argv[1]), sys.argv[2]
spec = json.loads((kit / "sources.json").read_text())
spec["sources"] = [s for s in spec["sources"] if (kit / s["folder"]).is_dir()]
pathlib.Path(out).write_text(json.dumps(spec))
print("probe sources:", [s["name"] for s in spec["sources"]])
PY
    read -ra data_args <"$DATA/train_args"
    started=$(date +%s)
    PYTHONPATH="$PWD/.device/site:$PWD" "$PYTHON" -m segment_plugin.engine train "${data_args[@]}" \
        --sources "$PROBE/sources.json" --base-model tests/models/landcover-dubai --name probe \
        --epochs 1 --steps-per-epoch "${STEPS:-40}" --batch "${BATCH:-32}" \
        --workers "${WORKERS:-12}" --device "${DEVICE:-gpu}" --seed 1 \
        --output "$PROBE/model" --overwrite --progress json >"$OUT/probe.log" 2>&1 || {
        tail -n 40 "$OUT/probe.log"; exit 1; }
    echo "probe: $(($(date +%s) - started)) s in all"
    # seconds per step from the last ETA (the first steps' warm-up included: an overestimate)
    "$PYTHON" - "$OUT/probe.log" "$PROBE/steps_per_s" <<'PY'
import json, re, sys
last = None
for line in open(sys.argv[1]):
    if line.startswith("{"):
        event = json.loads(line)
        if event.get("event") == "progress" and event.get("eta_s"):
            last = event
        elif event.get("event") in ("metrics", "log"):
            print(event)
done, total = map(int, re.search(r"batch (\d+)/(\d+)", last["message"]).groups())
rate = (total - done) / last["eta_s"]
open(sys.argv[2], "w").write(f"{rate}\n")
print(f"{rate:.2f} steps/s ({last['message']}, eta {last['eta_s']} s)")
PY
    ;;
train)
    test -f "$DATA/train_args" || { echo "$DATA is missing: carry it (make device-kit)"; exit 1; }
    read -ra data_args <"$DATA/train_args"
    mkdir -p "$OUT"
    base=tests/models/landcover-dubai output=build/device-train/landcover stage_args=()
    if [ "${STAGE:-1}" = 2 ]; then
        test -f "$output/model.keras" || { echo "no stage 1 here: run train first"; exit 1; }
        test -f "$DATA/stage2_args" || { echo "$DATA/stage2_args is missing: make device-kit-multisource"; exit 1; }
        read -ra stage_args <"$DATA/stage2_args"
        base=$output output=build/device-train/continued
        EPOCHS=${EPOCHS:-3} LR=${LR:-1e-4}
    fi
    if [ -z "${STEPS:-}" ] && [ -f "$PROBE/steps_per_s" ]; then
        # two thirds of what the probe's pace fits in LIMIT, less 90 s to load the data
        STEPS=$("$PYTHON" -c "import sys; r = float(open('$PROBE/steps_per_s').read())
print(max(10, int(r * (${LIMIT:-480} - 90) * 2 / 3 / ${EPOCHS:-60})))")
        echo "STEPS=$STEPS per epoch, from the probe's pace"
    fi
    status=0
    PYTHONPATH="$PWD/.device/site:$PWD" PYTHONUNBUFFERED=1 \
        timeout -s TERM "${LIMIT:-480}" "$PYTHON" -m segment_plugin.engine train "${data_args[@]}" \
        --base-model "$base" --name landcover "${stage_args[@]}" \
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
    echo "usage: $0 install|probe|train" >&2
    exit 2
    ;;
esac
