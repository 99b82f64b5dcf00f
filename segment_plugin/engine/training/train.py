"""The training loop: chips → Keras ``fit`` → the best model package by validation mIoU.

Reports JSON-friendly progress per batch and metrics per epoch through the Reporter, stops early
when validation mIoU stops improving, and keeps what it needs to resume (weights, optimizer
state, epoch) in ``<output>/.training/`` after every epoch, since CPU training may span several
sittings. Cancel stops after the current batch; the best model saved so far stays.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine.devices import describe, patch_workers, select_device
from segment_plugin.engine.errors import CancelledError, InputError, OutputError
from segment_plugin.engine.models.architectures import (
    build_model,
    initial_weights,
    input_multiple,
)
from segment_plugin.engine.models.package import (
    ModelCard,
    ModelPackage,
    Normalization,
    _keras,
    read_classes_json,
    save_package,
)
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.normalize import (
    DTYPE_RANGE,
    Normalizer,
    without_stretch,
)
from segment_plugin.engine.outputs import ensure_writable_folder
from segment_plugin.engine.params import TrainParams
from segment_plugin.engine.progress import CancelToken, Reporter
from segment_plugin.engine.tiling import default_overlap
from segment_plugin.engine.training import metrics
from segment_plugin.engine.training.chips import (
    PatchSampler,
    Scene,
    class_pixel_counts,
    labelled_scene,
    near_duplicates,
    pairs_folder,
    pooled_stats,
    split_by_area,
    stretched_scenes,
)
from segment_plugin.engine.training.context import beside_centre, centre_margin
from segment_plugin.engine.training.distill import beside_teacher
from segment_plugin.engine.training.losses import (
    class_weights,
    make_loss,
    with_consistency,
    with_distillation,
)
from segment_plugin.engine.training.sources import (
    Source,
    load_sources,
    read_sources,
    scene_groups,
    source_record,
)

DEFAULT_BAND_NAMES = ("red", "green", "blue", "nir")
# encoder layers of the U-Nets (enc*, pool*, bottleneck) and of the EfficientNet (stem*, block*)
ENCODER_PREFIXES = ("enc", "pool", "bottleneck", "stem", "block")
STATE_DIR = ".training"
#: whole pair images are held out for validation only when that makes at least this many;
#: otherwise every image is split by area. Eight drone chips of one scene, two held out:
#: validation rose 0.156 → 0.452 while the scene's far end fell 0.255 → 0.211; each chip's last
#: 20 % instead: 0.255 → 0.322 (20 epochs)
MIN_VALIDATION_IMAGES = 3
#: the least gain in validation mIoU for a fine-tune to replace its base model: a smaller one
#: is within the noise of a small validation area
MIN_GAIN = 0.01
#: the fewest steps of an epoch by default (steps follow the labelled area, at least these)
MIN_STEPS = 25


def _held_out(count: int, fraction: float) -> int:
    """How many of ``count`` images validation by whole images would hold out."""
    return min(count - 1, max(1, round(count * fraction)))


def _split(scenes: list[Scene], fraction: float, seed: int) -> tuple[list[Scene], list[Scene]]:
    """Validation by whole images (neighbouring pixels of one image are not independent)."""
    order = np.random.default_rng(seed).permutation(len(scenes))
    n_val = _held_out(len(scenes), fraction)
    return [scenes[i] for i in order[n_val:]], [scenes[i] for i in order[:n_val]]


def _split_each_by_area(scenes: list[Scene], fraction: float) -> tuple[list[Scene], list[Scene]]:
    """Validation on the same share of every image's labelled area.

    An image with too few labels to split trains whole; if none can be split, the error says so.
    """
    train_scenes, val_scenes, refused = [], [], None
    for scene in scenes:
        try:
            train_part, val_part = split_by_area(scene, fraction)
        except InputError as error:
            train_scenes.append(scene)
            refused = refused or error
            continue
        train_scenes.append(train_part)
        val_scenes.append(val_part)
    if not val_scenes:
        raise refused
    return train_scenes, val_scenes


def _raster_bands(params: TrainParams, base: ModelCard | None) -> list[int] | None:
    """0-based bands of ``params.raster`` for the model: --bands, else matched like segment does."""
    if params.bands:
        return list(range(params.bands))
    if base is None:
        return None
    import rasterio

    from segment_plugin.engine.raster_io import resolve_bands

    with rasterio.open(params.raster) as src:
        return [b - 1 for b in resolve_bands(src, base, None)]


def _training_data(
    params: TrainParams, codes: list[int], base: ModelCard | None, sources: list[Source]
) -> tuple[list[Scene], list[Scene]]:
    """Training and validation scenes.

    Pairs are split by image, a labelled raster by area, sources by their hold-out patterns.
    ``base`` is the card of the model being fine-tuned, if any: it decides the bands.
    """
    # a base model takes its own number of bands: the first ones of each image, as with --bands
    pair_bands = params.bands or (len(base.bands) if base is not None else None)
    from_sources = load_sources(sources, codes, pair_bands)
    pairs = [s for folder in params.images for s in pairs_folder(folder, codes, pair_bands)]
    if params.val_images:
        train_scenes, val_scenes = pairs, pairs_folder(params.val_images, codes, pair_bands)
    elif pairs and _held_out(len(pairs), params.val_fraction) < MIN_VALIDATION_IMAGES:
        # one or two held-out images of a few are no measure of the region
        train_scenes, val_scenes = _split_each_by_area(pairs, params.val_fraction)
    elif pairs:
        train_scenes, val_scenes = _split(pairs, params.val_fraction, params.seed)
    else:
        train_scenes, val_scenes = [], []
    train_scenes += from_sources[0]
    val_scenes += from_sources[1]
    if params.raster is not None:
        scene = labelled_scene(params.raster, params.labels, params.field, params.mapping, codes)
        bands = _raster_bands(params, base)
        if bands is not None:
            scene.image = scene.image[bands]
        if params.val_images:
            train_scenes.append(scene)
        else:
            train_part, val_part = split_by_area(scene, params.val_fraction)
            train_scenes.append(train_part)
            val_scenes.append(val_part)
    if not val_scenes:
        raise InputError("nothing to validate on: give --val-images or validation patterns")
    counts = sorted({scene.image.shape[0] for scene in train_scenes + val_scenes})
    if len(counts) > 1:
        raise InputError(
            f"the images have different numbers of bands ({', '.join(map(str, counts))}): "
            "use the first N of each with --bands N"
        )
    return train_scenes, val_scenes


class _Batches:
    """A Keras PyDataset of random augmented patches (defined lazily: Keras is imported late)."""

    @staticmethod
    def make(
        sampler: PatchSampler,
        batch: int,
        steps: int,
        seed: int,
        workers: int,
        sizes: Sequence[int] = (),
    ) -> Any:
        """``sizes``: patch sizes the steps cycle through (batch scaled to the same pixels)."""
        keras = _keras()
        # cycled, not drawn: Keras takes the input shapes from the first two batches, so
        # those must differ for it to accept every size
        kinds = [
            (sampler.with_patch(size), max(1, round(batch * (sampler.patch / size) ** 2)))
            for size in sizes
        ] or [(sampler, batch)]

        class PatchBatches(keras.utils.PyDataset):
            # threads (not processes): they share the scenes and this epoch counter; each
            # batch's generator is seeded by (seed, epoch, index), so which thread cuts it and
            # in which order does not change it
            def __init__(self) -> None:
                super().__init__(workers=workers)
                self.epoch = 0

            def __len__(self) -> int:
                return steps

            def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
                rng = np.random.default_rng((seed, self.epoch, index))
                cutter, count = kinds[index % len(kinds)]
                pairs = [cutter.random_patch(rng) for _ in range(count)]
                return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

            def on_epoch_end(self) -> None:
                self.epoch += 1

        return PatchBatches()


def _model_and_card(
    params: TrainParams, base: ModelPackage | None, scenes: list[Scene], reporter: Reporter
) -> tuple[Any, ModelCard]:
    keras = _keras()
    if base is not None:
        base_card, model = base.card, base.load_model()
        classes = read_classes_json(params.classes) if params.classes else base_card.classes
        if [c.code for c in classes] != base_card.class_codes:
            reporter.log(f"new class list: the head of {base_card.name} is re-initialised")
            features = model.layers[-2].output
            head = keras.layers.Conv2D(
                len(classes), 1, activation="softmax", name="classes_finetuned"
            )
            model = keras.Model(model.inputs, head(features), name=model.name)
        # the base's known failures were seen on the base, which fine-tuning may mend where it
        # trained (or hand back unchanged): say whose they are
        limitations = base_card.limitations and f"seen on {base_card.name}: {base_card.limitations}"
        card = replace(base_card, classes=classes, limitations=limitations)
        _set_batchnorm(model, params.train_batchnorm, reporter)
    else:
        if params.classes is None:
            raise InputError("a new model needs --classes classes.json (or --base-model)")
        classes = read_classes_json(params.classes)
        bands = params.bands or scenes[0].image.shape[0]
        dtype = str(scenes[0].image.dtype)
        norm = (
            Normalization("scale", scale=1 / 255)
            if dtype == "uint8"
            else Normalization("percentile")
        )
        model = build_model(params.arch, bands, len(classes), params.filters)
        names = (
            DEFAULT_BAND_NAMES[:bands]
            if bands <= 4
            else tuple(f"band_{i + 1}" for i in range(bands))
        )
        card = ModelCard(
            name=params.name or params.output.name,
            classes=classes,
            bands=tuple(names),
            normalization=norm,
            input_dtype=dtype if dtype in DTYPE_RANGE else "float32",
            resolution_m=None,
            tile_size=params.tile_size or max(params.patch, 256),
            input_multiple=input_multiple(arch=params.arch),
            architecture=params.arch,
        )
    if model.inputs[0].shape[-1] != scenes[0].image.shape[0]:
        raise InputError(
            f"the images have {scenes[0].image.shape[0]} bands, the model takes "
            f"{model.inputs[0].shape[-1]}"
        )
    if params.freeze_encoder:
        frozen = [layer for layer in model.layers if layer.name.startswith(ENCODER_PREFIXES)]
        if not frozen:
            raise InputError(
                "--freeze-encoder: this model has no encoder layers (enc*, pool*, stem*, block*)"
            )
        for layer in frozen:
            layer.trainable = False
        reporter.log(f"encoder frozen: {len(frozen)} layers")
    card = replace(card, name=params.name or params.output.name)
    return model, replace(card, description=params.description) if params.description else card


def _set_batchnorm(model: Any, trainable: bool, reporter: Reporter) -> None:
    """Batch normalisation trained, or in inference mode with the base's statistics.

    Updated from a few images of one region those statistics shift the whole network away from
    what the base learnt, so a fine-tune keeps them unless asked (Keras runs a non-trainable
    BatchNormalization layer in inference mode).
    """
    keras = _keras()
    layers = [
        layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in layers:
        layer.trainable = trainable
    if layers and not trainable:
        reporter.log(f"batch normalisation frozen: {len(layers)} layers keep the base's statistics")


def _all_layers(model: Any) -> list[Any]:
    """Every layer, those of nested models too."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers.extend(_all_layers(layer))
    return layers


def _predict_scene(
    model: Any,
    normalizer: Normalizer,
    scene: Scene,
    params: TrainParams,
    class_weights: tuple[float, ...] | None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """A scene's classes as inference gives them, tiled at the training patch size."""
    from segment_plugin.engine.inference import predict_array

    return predict_array(
        model, normalizer, scene.image, params.patch, default_overlap(params.patch), params.batch,
        class_weights=class_weights, cancel=cancel,
    )  # fmt: skip


def _default_steps(sampler: PatchSampler, patch: int, batch: int) -> int:
    """About one pass over the labelled area (at the training resolution), at least MIN_STEPS."""
    labelled = sum(
        pixels * sampler.scale_of(scene) ** 2
        for scene, pixels in zip(sampler.scenes, sampler.labelled_pixels)
    )
    return max(MIN_STEPS, round(labelled / patch**2 / batch))


#: a fine-tune's class weights, recomputed from its few labels, are kept within these bounds
FINE_TUNE_WEIGHT_BOUNDS = (0.25, 4.0)


def _loss_class_weights(
    scheme: str, counts: np.ndarray, base_card: ModelCard | None, reporter: Reporter
) -> np.ndarray | None:
    """The loss's class weights: ``scheme`` over the training labels, or the base's ("base").

    "auto" is median-frequency, bounded to FINE_TUNE_WEIGHT_BOUNDS for a fine-tune: recomputed
    from two 1024² tiles they were background 0.06, road 17.4, and the model flooded the map
    with roads; the base model's own weights instead (tried) made a fine-tune on the Chesapeake
    tile worse on its validation area every epoch (0.200 → 0.119), where bounded ones raise it.
    """
    if scheme == "base":
        if base_card is None or base_card.class_weights is None:
            raise InputError("class-weights base: the base model's card has no class weights")
        return np.asarray(base_card.class_weights, np.float32)
    weights = class_weights("median_frequency" if scheme == "auto" else scheme, counts)
    if weights is None:
        return None
    present = weights > 0
    if scheme == "auto" and base_card is not None:
        weights[present] = np.clip(weights[present], *FINE_TUNE_WEIGHT_BOUNDS)
        reporter.log(f"class weights bounded to {FINE_TUNE_WEIGHT_BOUNDS} (fine-tuning)")
    # A class no label names may still be what an "other" pixel is, and such a pixel is
    # weighted by its possible classes' weights: zeros would drop it from the loss, and a
    # roads-only fine-tune learnt road everywhere.
    weights[~present] = 1.0
    return weights


def _card_class_weights(
    weights: np.ndarray | None, kept_head_of: ModelCard | None
) -> tuple[float, ...] | None:
    """The class weights whose bias inference undoes (see inference.undo_class_weights).

    A fine-tune that keeps its base model's head (``kept_head_of``) keeps its weights too: a few
    epochs move the outputs little from the base's bias. Measured on the Chesapeake fine-tune of
    tests/engine/test_fine_tune.py (3 epochs of 8 steps, from the first-stage bundled model):
    undoing the base's weights scored val mIoU 0.211, the fine-tune's own loss weights 0.167
    (background 0.54, woodland 0.09, water 6.5: far from what 24 steps learnt), nothing 0.195. A
    new model, or a new head, gets its own loss's weights; a class absent from its training
    labels (weight 0) was never weighted: 1.
    """
    if kept_head_of is not None:
        return kept_head_of.class_weights
    if weights is None:
        return None
    return tuple(round(float(w), 5) if w > 0 else 1.0 for w in weights)


class _EpochEnd:
    """Keras callback: validation metrics, best model, early stopping, progress, cancel, resume."""

    @staticmethod
    def make(ctx: dict[str, Any]) -> Any:
        keras = _keras()

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                reporter: Reporter = ctx["reporter"]
                step = ctx["epoch"] * ctx["steps"] + batch + 1
                total = ctx["epochs"] * ctx["steps"]
                elapsed = time.monotonic() - ctx["started"]
                done = step - ctx["first_step"]
                eta = elapsed / done * (total - step) if done else None
                reporter.progress(
                    step / total,
                    f"epoch {ctx['epoch'] + 1}/{ctx['epochs']}, batch {batch + 1}/{ctx['steps']}",
                    loss=round(float((logs or {}).get("loss", float("nan"))), 5),
                    eta_s=round(eta, 1) if eta is not None else None,
                )
                if reporter.cancel.is_set():
                    self.model.stop_training = True

            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                ctx["epoch"] = epoch

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                if ctx["reporter"].cancel.is_set():
                    return
                ctx["on_epoch_end"](self.model, epoch, logs or {})

        return Callback()


def train(params: TrainParams, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train (or fine-tune) a model and write its package to ``params.output``."""
    reporter = reporter or Reporter()
    device = select_device(params.device)
    params = replace(params, workers=patch_workers(params.workers, device))
    reporter.log(
        f"training on {device} (Keras backend {_keras().backend.backend()}), "
        f"{params.workers} thread(s) cutting patches"
    )
    with _keras().device(device):
        return _train(params, reporter, describe(device))


def _train(params: TrainParams, reporter: Reporter, device: str) -> dict[str, Any]:
    keras = _keras()
    keras.utils.set_random_seed(params.seed)
    output = params.output
    state_dir = output / STATE_DIR
    if output.exists() and not (params.overwrite or params.resume):
        raise OutputError(f"{output} exists; pass --overwrite to replace it or --resume")
    if params.resume and not (state_dir / "state.json").exists():
        raise InputError(f"nothing to resume in {output} (no {STATE_DIR}/state.json)")
    ensure_writable_folder(output.parent, "the models folder")
    base = resolve_model(params.base_model) if params.base_model else None
    base_card = base.card if base is not None else None
    # before any image is read: the sources of a multi-source run take a minute to load
    multiple = base_card.input_multiple if base_card else input_multiple(arch=params.arch)
    uneven = [size for size in (params.patch, *params.patch_sizes) if size % multiple]
    if uneven:
        raise InputError(
            f"patch sizes {uneven} are not multiples of {multiple}, as this architecture needs"
        )
    margin = centre_margin(params.patch, params.patch_sizes, multiple) if params.consistency else 0
    if params.classes:
        codes = [c.code for c in read_classes_json(params.classes)]
    elif base_card is not None:
        codes = base_card.class_codes
    else:
        raise InputError("a new model needs --classes classes.json (or --base-model)")

    sources = read_sources(params.sources, params.data_root) if params.sources else []
    source_weights = {s.name: s.weight for s in sources} or None
    train_scenes, val_scenes = _training_data(params, codes, base_card, sources)
    if source_weights and params.images:
        source_weights[""] = 1.0  # --images beside --sources: one more source of weight 1
    resolution = params.resolution or (base_card.resolution_m if base_card else None)
    val_scenes = [s.at_resolution(resolution) for s in val_scenes]
    duplicates = near_duplicates(train_scenes + val_scenes)
    for a, b in duplicates[:10]:
        reporter.log(f"near-duplicate images (perceptual hash): {a} and {b}", "warning")
    model, card = _model_and_card(params, base, train_scenes, reporter)
    card = replace(card, resolution_m=resolution)
    if params.stretch and card.normalization.method == "percentile":
        whose = f"the base model {base_card.name!r}" if base_card else "a new non-uint8 model"
        raise InputError(f"--stretch: {whose} stretches each raster already (percentile)")
    norm = card.normalization
    if params.stretch:
        norm = replace(norm, stretch=True, max_gain=params.stretch_max_gain or norm.max_gain)
    card = replace(card, normalization=norm)
    if norm.stretch:  # once, as segment stretches a raster: an image, or one scene's images
        train_scenes, val_scenes = (
            stretched_scenes(scenes, scene_groups(scenes, sources), norm)
            for scenes in (train_scenes, val_scenes)
        )
    same_classes = base_card is not None and base_card.class_codes == list(codes)
    kept_head_of = base_card if same_classes else None
    stats = pooled_stats(train_scenes, norm.low, norm.high)
    normalizer = Normalizer(without_stretch(card), stats, card.input_dtype)
    counts = class_pixel_counts(train_scenes, len(codes), source_weights)
    if params.class_weights == "base" and not same_classes:
        raise InputError("class-weights base: the classes differ from the base model's")
    weights = _loss_class_weights(params.class_weights, counts, base_card, reporter)
    card = replace(card, class_weights=_card_class_weights(weights, kept_head_of))
    value_range = DTYPE_RANGE.get(card.input_dtype, (0.0, 1.0))[1]
    sampler = PatchSampler(
        train_scenes,
        params.patch,
        normalizer,
        value_range,
        params.augment,
        params.max_ignore,
        resolution,
        source_weights,
        params.contrast,
    )
    steps = params.steps_per_epoch or _default_steps(sampler, params.patch, params.batch)
    batches = _Batches.make(
        sampler, params.batch, steps, params.seed, params.workers, params.patch_sizes
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        params.learning_rate, params.epochs * steps, alpha=0.05
    )
    loss = make_loss(params.loss, weights)
    # what fit trains: the model, or the model beside its base for the distillation term
    fitted, fit_loss = model, loss
    partial = any(scene.labelled is not None for scene in train_scenes)
    if not (same_classes and partial):
        params = replace(params, distill=0.0)  # the card says what training did
    if params.distill > 0:
        fitted = beside_teacher(model, base.load_model())
        fit_loss = with_distillation(loss, len(codes), params.distill)
        reporter.log(
            f"distillation (weight {params.distill}): on 'other' pixels the model keeps the "
            "base model's odds among the classes they may be"
        )
    if margin:
        fitted = beside_centre(fitted, model, margin)
        fit_loss = with_consistency(fit_loss, len(codes), params.consistency, margin)
        reporter.log(
            f"context consistency (weight {params.consistency}): each patch's centre, "
            f"{margin} px in from every side, is also classed alone and held to the whole "
            "patch's posteriors there"
        )
    fitted.compile(optimizer=keras.optimizers.Adam(schedule), loss=fit_loss)
    names = [c.name for c in card.classes]
    reporter.log(
        f"training {card.architecture or 'model'} on {len(train_scenes)} images "
        f"({len(val_scenes)} for validation), {steps} steps of {params.batch} patches of "
        f"{params.patch} px per epoch"
        + (
            f" (or as many pixels in patches of {', '.join(map(str, params.patch_sizes))} px, "
            "in turn)"
            if params.patch_sizes
            else ""
        )
        + "; class weights "
        + (
            ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights))
            if weights is not None
            else "none"
        )
    )

    state = {"epoch": 0, "best_miou": -1.0, "best_epoch": None, "history": [], "stale": 0}
    if params.resume:
        state = json.loads((state_dir / "state.json").read_text())
        # Built first, the optimizer takes its step count and moments from the same file as the
        # weights (an unbuilt one is skipped with a warning and would restart Adam and the
        # cosine decay from step 0).
        fitted.optimizer.build(fitted.trainable_variables)
        fitted.load_weights(state_dir / "last.weights.h5")
        reporter.log(
            f"resuming after epoch {state['epoch']} (best val mIoU {state['best_miou']:.4f})"
        )

    def validate(model: Any, fraction: float, stage: str) -> tuple[dict[str, Any], float]:
        """Validation metrics and the training loss on validation patches.

        The metrics are of the model as inference runs it, its card's class weights undone;
        per source when there are several (a partially labelled one scores its labelled
        classes only), and then their mean mIoU is the one that picks the best epoch.
        Progress names each image, and a cancel stops it between batches: on large validation
        areas it takes minutes.
        """
        matrices: dict[str, np.ndarray] = {}
        partial: dict[str, tuple[int, ...] | None] = {}
        for number, scene in enumerate(val_scenes, 1):
            reporter.progress(fraction, f"{stage}: validating, image {number}/{len(val_scenes)}")
            predicted = _predict_scene(
                model, normalizer, scene, params, card.class_weights, reporter.cancel
            )
            matrix = metrics.confusion_with_other(scene.labels, predicted, len(codes))
            matrices[scene.source] = matrices.get(scene.source, 0) + matrix
            partial[scene.source] = scene.labelled
        losses = []
        for image, labels in sampler_val_patches:
            reporter.cancel.check()
            probs = model.predict_on_batch(image[None])
            losses.append(float(keras.ops.convert_to_numpy(loss(labels[None], probs))))
        val_loss = float(np.mean(losses)) if losses else float("nan")
        reports = {
            name: metrics.report_with_other(matrix, names, partial[name])
            for name, matrix in matrices.items()
        }
        if len(reports) == 1:
            return next(iter(reports.values())), val_loss
        scores = [r["miou"] for r in reports.values() if r["miou"] is not None]
        mean = round(float(np.mean(scores)), 5) if scores else None
        per_class = {
            n: _mean_defined(r["per_class_iou"][n] for r in reports.values()) for n in names
        }
        summary = {
            "miou": mean,
            "per_class_iou": per_class,
            "pixel_accuracy": _mean_defined(r["pixel_accuracy"] for r in reports.values()),
            "per_source": {
                name: {k: r[k] for k in ("miou", "per_class_iou", "pixels")}
                for name, r in reports.items()
            },
        }
        return summary, val_loss

    val_sampler = PatchSampler(
        val_scenes, params.patch, normalizer, value_range, False, 1.0, resolution
    )
    sampler_val_patches = val_sampler.grid_patches()[:64]

    before = None
    if same_classes and not params.resume:  # a re-initialised head has no "before"
        before, _ = validate(model, 0.0, "base model")  # on the same validation area
        reporter.log(f"base model before fine-tuning: val mIoU {before['miou']}")
        # epoch 0 = the base model, so that a live chart starts where fine-tuning starts
        reporter.metrics(
            epoch=0, base=True, val_miou=before["miou"], val_per_class_iou=before["per_class_iou"]
        )
        if before["miou"] is not None:
            # the base model is the first candidate (epoch 0): fine-tuning that never beats it
            # on the validation area hands it back rather than a worse model
            state.update(best_miou=before["miou"], best_epoch=0, best_report=before)
            save_package(
                model,
                _final_card(card, params, sources, train_scenes, val_scenes, state, before, device),
                output,
            )

    def on_epoch_end(fitted: Any, epoch: int, logs: dict) -> None:
        report, val_loss = validate(model, (epoch + 1) / params.epochs, f"epoch {epoch + 1}")
        miou = report["miou"] if report["miou"] is not None else 0.0
        entry = {
            "epoch": epoch + 1,
            "loss": round(float(logs.get("loss", float("nan"))), 5),
            "val_loss": round(val_loss, 5),
            "val_miou": miou,
            "val_per_class_iou": report["per_class_iou"],
        }
        if "per_source" in report:
            entry["val_per_source"] = {k: v["miou"] for k, v in report["per_source"].items()}
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        # replacing the base model takes a clear gain; later epochs only need to beat the best
        bar = state["best_miou"] + (MIN_GAIN if state["best_epoch"] == 0 else 0.0)
        improved = miou > bar
        if improved:
            state.update(best_miou=miou, best_epoch=epoch + 1, stale=0, best_report=report)
            save_package(
                model,
                _final_card(card, params, sources, train_scenes, val_scenes, state, report, device),
                output,
            )
        else:
            state["stale"] += 1
        _save_state(state_dir, fitted, state)
        reporter.metrics(**entry, best=improved)
        if state["stale"] >= params.patience:
            reporter.log(f"early stop: val mIoU did not improve for {params.patience} epochs")
            fitted.stop_training = True

    ctx = {
        "reporter": reporter,
        "epoch": state["epoch"],
        "epochs": params.epochs,
        "steps": steps,
        "started": time.monotonic(),
        "first_step": state["epoch"] * steps,
        "on_epoch_end": on_epoch_end,
    }
    started = time.monotonic()
    if state["epoch"] < params.epochs and state["stale"] < params.patience:
        try:
            with reporter.cancel.checkpoints():
                fitted.fit(
                    batches,
                    epochs=params.epochs,
                    initial_epoch=state["epoch"],
                    verbose=0,
                    callbacks=[_EpochEnd.make(ctx)],
                )
        except CancelledError:
            if state["best_epoch"] is None:
                raise CancelledError(
                    "cancelled before the first epoch ended: no model saved"
                ) from None
            raise CancelledError(
                f"cancelled; the best model so far (epoch {state['best_epoch']}, val mIoU "
                f"{state['best_miou']:.4f}) is kept in {output}"
            ) from None
    seconds = time.monotonic() - started
    handed_back = None
    if state["best_epoch"] == 0:
        tried = max((e["val_miou"] for e in state["history"]), default=None)
        handed_back = (
            f"fine-tuning did not improve on the base model's val mIoU {state['best_miou']:.4f} "
            f"by {MIN_GAIN} (best epoch: "
            + (f"{tried:.4f}" if tried is not None else "none")
            + f"): {output} holds the base model"
        )
        reporter.log(handed_back, "warning")
    patches = (state["epoch"] - ctx["first_step"] // steps) * steps * params.batch
    return {
        "output": str(output),
        "best_epoch": state["best_epoch"],
        "val_miou": state["best_miou"],
        "val_report": state.get("best_report"),
        "base_val_report": before,
        "handed_back": handed_back,
        "validation": [scene.name for scene in val_scenes][:50],
        "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
        "history": state["history"],
        "near_duplicates": duplicates,
        "patches_per_s": round(patches / seconds, 2) if seconds > 0 and patches > 0 else None,
        "params": json.loads(params.to_json()),
    }


def _mean_defined(values: Any) -> float | None:
    """Mean of the values that are not None (None if none is)."""
    defined = [v for v in values if v is not None]
    return round(float(np.mean(defined)), 5) if defined else None


def _save_state(state_dir: Path, model: Any, state: dict[str, Any]) -> None:
    """What ``--resume`` needs after an epoch: weights with the optimizer's state, then the log.

    Each file is written under a temporary name and renamed, so a sitting that ends during the
    write (CPU training spans several) leaves each file whole, never torn. Only between the two
    renames can this epoch's weights meet the previous epoch's log: a resume then repeats one
    epoch, which costs time, not a broken state.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    partial_weights = state_dir / ".last.partial.weights.h5"  # Keras wants .weights.h5
    partial_state = state_dir / ".state.json.partial"
    try:
        model.save_weights(partial_weights)
        partial_state.write_text(json.dumps(state))
        os.replace(partial_weights, state_dir / "last.weights.h5")
        os.replace(partial_state, state_dir / "state.json")
    finally:
        partial_weights.unlink(missing_ok=True)
        partial_state.unlink(missing_ok=True)


def _final_card(
    card: ModelCard,
    params: TrainParams,
    sources: list[Source],
    train_scenes: list[Scene],
    val_scenes: list[Scene],
    state: dict,
    report: dict,
    device: str,
) -> ModelCard:
    training = {
        "data": [str(p) for p in params.images],
        "validation": str(params.val_images)
        if params.val_images
        else f"{len(val_scenes)} held-out images",
        "images": len(train_scenes),
        "epochs": state["epoch"],
        "planned_epochs": params.epochs,
        "best_epoch": state["best_epoch"],
        "patch": params.patch,
        "patch_sizes": list(params.patch_sizes),
        "batch": params.batch,
        "loss": params.loss,
        "class_weights": params.class_weights,
        "learning_rate": params.learning_rate,
        "augment": params.augment,
        "contrast": list(params.contrast),
        "filters": params.filters,
        "freeze_encoder": params.freeze_encoder,
        "train_batchnorm": params.train_batchnorm if params.base_model else True,
        "distill": params.distill,
        "consistency": params.consistency,
        "base_model": params.base_model,
        "initial_weights": params.base_model or initial_weights(params.arch),
        "seed": params.seed,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "device": device,
    }
    if sources:
        training["sources"] = source_record(
            sources, train_scenes, val_scenes, [c.name for c in card.classes]
        )
        training["data"] += [str(s.folder) for s in sources]
        training["validation"] = "held-out images of each source (validation patterns)"
        training["resolution_m"] = card.resolution_m
    measured = {
        "miou": report["miou"],
        "per_class_iou": report["per_class_iou"],
        "pixel_accuracy": report["pixel_accuracy"],
        "on": training["validation"],
    }
    if "per_source" in report:
        measured["per_source"] = report["per_source"]
    return replace(card, training=training, metrics=measured)
