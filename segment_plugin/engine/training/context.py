"""Context consistency: a patch's centre classed alike with and without its surroundings.

``segment``'s map changes with the tile size where the model leans on context beyond a tile
(docs/multisource-candidate.md, "Tile size"). With ``--consistency`` the training graph runs the
model a second time on each patch's centre, cut ``margin`` pixels in from every side, and the
loss (losses.with_consistency) asks those posteriors to match the whole patch's there.
"""

from __future__ import annotations

from typing import Any

from segment_plugin.engine.errors import InputError
from segment_plugin.engine.models.package import _keras


def centre_margin(patch: int, sizes: tuple[int, ...], multiple: int) -> int:
    """Pixels cut from each side: a quarter of ``patch``, so the centre keeps the multiple.

    The centre of every training patch size must remain a patch the model can take.
    """
    step = max(1, multiple // 2)  # both sides together: a whole multiple
    margin = patch // 4 // step * step
    too_small = [size for size in (patch, *sizes) if size - 2 * margin < max(multiple, 16)]
    if margin < 1 or too_small:
        raise InputError(
            f"--consistency: patches of {too_small or [patch]} px are too small to cut a "
            f"{margin} px margin from each side and keep a centre the model can take"
        )
    return margin


def beside_centre(fitted: Any, model: Any, margin: int) -> Any:
    """``fitted``'s outputs, then ``model``'s posteriors on the centre, padded back with zeros.

    ``fitted`` is ``model`` or ``model`` beside its teacher (training/distill.py); only
    ``model``'s weights are shared and trained. Save and validate ``model`` itself, not this.
    """
    keras = _keras()
    image = keras.Input(model.inputs[0].shape[1:], name="image")
    centre = keras.layers.Cropping2D(margin, name="centre")(image)
    centre_probs = keras.layers.ZeroPadding2D(margin, name="centre_padded")(model(centre))
    both = keras.layers.Concatenate(name="patch_and_centre")([fitted(image), centre_probs])
    return keras.Model(image, both, name=f"{model.name}_beside_centre")
