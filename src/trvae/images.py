"""Image style transfer with a ground truth: MNIST digits in thin / normal / thick strokes.

:func:`make_thickness_conditions` turns every digit into three conditions by grey-scale
morphology, so the true thin and thick version of every digit is known, which lets a transfer
be scored image by image. The metric helpers score predicted against true images:

- :func:`pixel_mse`: mean squared pixel error per image;
- :func:`ssim`: structural similarity per image (``skimage.metrics.structural_similarity``,
  ``data_range=1``);
- :func:`stroke_thickness`: stroke thickness as Morpho-MNIST measures it, pixel area divided by
  skeleton length of the image thresholded at 0.5;
- :func:`train_digit_classifier` / :func:`digit_accuracy`: whether the digit's class survives.

These helpers need the ``images`` extra (scikit-image and scikit-learn).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage

from trvae._errors import TRVAEError

__all__ = [
    "CONDITIONS",
    "STRUCTURES",
    "digit_accuracy",
    "make_thickness_conditions",
    "pixel_mse",
    "ssim",
    "stroke_thickness",
    "train_digit_classifier",
]

#: The three conditions, thinnest first.
CONDITIONS = ("thin", "normal", "thick")

#: Structuring elements (footprints) of the erosion/dilation. ``"cross"``, the 3x3 cross (the
#: pixel and its 4 neighbours), moves every stroke edge by one pixel: on 28x28 MNIST, whose
#: strokes are about 3 pixels wide, it takes the mean thickness (:func:`stroke_thickness`,
#: measured on 500 digits) from 2.96 to 1.47 (thin) and 5.64 (thick) pixels, and leaves 2% of the
#: thin digits with no pixel above 0.5. ``"square"`` (3x3) also moves the edges diagonally:
#: 1.14 / 6.52 pixels, 15% of the thin digits erased. ``"square2"`` (2x2): 1.72 / 4.56 pixels,
#: none erased, but it moves one edge only and so shifts the image by half a pixel.
STRUCTURES: dict[str, np.ndarray] = {
    "cross": ndimage.generate_binary_structure(2, 1),
    "square": np.ones((3, 3), dtype=bool),
    "square2": np.ones((2, 2), dtype=bool),
}


def _as_images(x, image_shape: Sequence[int] | None) -> tuple[np.ndarray, tuple[int, int], bool]:
    """(n, H, W) float array of ``x`` ((n, H*W) or (n, H, W)), its shape, and if it was flat."""
    arr = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
    if arr.ndim == 3:
        return arr, (arr.shape[1], arr.shape[2]), False
    if arr.ndim != 2:
        raise TRVAEError(f"expected images (n, H, W) or flattened (n, H*W), got shape {arr.shape}")
    if image_shape is None:
        side = round(float(np.sqrt(arr.shape[1])))
        if side * side != arr.shape[1]:
            raise TRVAEError(f"cannot infer the image shape of {arr.shape[1]} pixels: pass it")
        image_shape = (side, side)
    shape = tuple(int(s) for s in image_shape)[-2:]
    if shape[0] * shape[1] != arr.shape[1]:
        raise TRVAEError(f"image_shape {shape} does not match {arr.shape[1]} pixels")
    return arr.reshape(len(arr), *shape), shape, True


def make_thickness_conditions(
    adata_or_images,
    digits: Sequence | None = None,
    image_shape: Sequence[int] | None = None,
    structure: str = "cross",
    digit_key: str = "digit",
) -> ad.AnnData:
    """Every digit in three conditions: ``thin`` (eroded), ``normal`` and ``thick`` (dilated).

    Parameters
    ----------
    adata_or_images
        AnnData of flattened images in [0, 1] (as :func:`trvae.datasets.mnist` returns, labels
        in ``obs[digit_key]``, shape in ``uns['image_shape']``), or an array ``(n, H, W)`` or
        ``(n, H*W)``.
    digits
        Labels of the images when an array is given (optional).
    image_shape
        ``(H, W)``; default ``uns['image_shape']``, or the square root of the pixel count.
    structure
        Footprint of :func:`scipy.ndimage.grey_erosion` / :func:`~scipy.ndimage.grey_dilation`,
        a key of :data:`STRUCTURES` (default ``"cross"``, the 3x3 cross: one pixel off or onto
        every stroke edge).
    digit_key
        Column of ``obs`` with the labels.

    Returns
    -------
    AnnData with ``3 n`` rows, X float32 (flattened), the blocks ``normal``, ``thin``,
    ``thick`` in this order; ``obs``: ``condition`` (categorical, categories
    :data:`CONDITIONS`), ``digit`` (when labels are known) and ``source_index`` (the row of the
    input image, so the row of the true version of any digit in any condition is known:
    ``source_index + k * n`` for block ``k``); ``uns``: ``image_shape`` and
    ``thickness_conditions`` (the footprint used).
    """
    labels = None
    if isinstance(adata_or_images, ad.AnnData):
        adata = adata_or_images
        if image_shape is None:
            image_shape = adata.uns.get("image_shape")
        x = adata.X
        if digit_key in adata.obs:
            labels = adata.obs[digit_key].astype(str).to_numpy()
    else:
        x = adata_or_images
    if digits is not None:
        labels = np.asarray(digits).astype(str)
    images, shape, _ = _as_images(x, image_shape)
    if labels is not None and len(labels) != len(images):
        raise TRVAEError(f"{len(labels)} digit labels for {len(images)} images")
    if structure not in STRUCTURES:
        raise TRVAEError(f"structure must be one of {sorted(STRUCTURES)}, got {structure!r}")
    footprint = STRUCTURES[structure][None]  # no mixing across images
    blocks = {
        "normal": images,
        "thin": ndimage.grey_erosion(images, footprint=footprint, mode="constant", cval=0.0),
        "thick": ndimage.grey_dilation(images, footprint=footprint, mode="constant", cval=0.0),
    }
    n = len(images)
    obs = {
        "condition": pd.Categorical(np.repeat(list(blocks), n), categories=list(CONDITIONS)),
        "source_index": np.tile(np.arange(n), 3),
    }
    if labels is not None:
        cats = sorted(set(labels), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else v))
        obs["digit"] = pd.Categorical(np.tile(labels, 3), categories=cats)
    frame = pd.DataFrame(obs, index=pd.Index([f"{i}_{c}" for c in blocks for i in range(n)]))
    x_all = np.concatenate([b.reshape(n, -1) for b in blocks.values()]).astype(np.float32)
    var = pd.DataFrame(index=pd.Index([f"px_{i}" for i in range(x_all.shape[1])]))
    out = ad.AnnData(X=np.clip(x_all, 0.0, 1.0), obs=frame, var=var)
    out.uns["image_shape"] = shape
    out.uns["thickness_conditions"] = {
        "structure": structure,
        "footprint": STRUCTURES[structure].astype(int).tolist(),
        "thin": "scipy.ndimage.grey_erosion",
        "thick": "scipy.ndimage.grey_dilation",
    }
    return out


# ---------------------------------------------------------------------------------- metrics
def pixel_mse(pred, true, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Mean squared pixel error of each image pair (rows of ``pred`` and ``true``)."""
    a, _, _ = _as_images(pred, image_shape)
    b, _, _ = _as_images(true, image_shape)
    if a.shape != b.shape:
        raise TRVAEError(f"pred {a.shape} and true {b.shape} differ in shape")
    return ((a - b) ** 2).mean(axis=(1, 2)).astype(np.float64)


def ssim(pred, true, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Structural similarity of each image pair, ``data_range=1`` (1 for identical images)."""
    from skimage.metrics import structural_similarity

    a, _, _ = _as_images(pred, image_shape)
    b, _, _ = _as_images(true, image_shape)
    if a.shape != b.shape:
        raise TRVAEError(f"pred {a.shape} and true {b.shape} differ in shape")
    return np.array(
        [structural_similarity(p, t, data_range=1.0) for p, t in zip(a, b, strict=True)]
    )


def stroke_thickness(
    images, image_shape: Sequence[int] | None = None, threshold: float = 0.5
) -> np.ndarray:
    """Mean stroke thickness of each image in pixels, as Morpho-MNIST approximates it.

    The image is binarised at ``threshold``; thickness is its area (foreground pixels) divided
    by the length of its skeleton (pixels of ``skimage.morphology.skeletonize``). An image with
    no foreground has thickness 0. A straight bar ``w`` pixels wide and ``L >> w`` long
    measures about ``w`` (its skeleton is a line about ``L`` pixels long).
    """
    from skimage.morphology import skeletonize

    arr, _, _ = _as_images(images, image_shape)
    out = np.zeros(len(arr))
    for i, image in enumerate(arr):
        binary = image > threshold
        area = binary.sum()
        if area:
            out[i] = area / max(int(skeletonize(binary).sum()), 1)
    return out


def train_digit_classifier(images, digits: Sequence, seed: int = 0, hidden: int = 128):
    """A small MLP (``sklearn.neural_network.MLPClassifier``) fitted to labelled images, seeded.

    ``images`` are flattened (n, H*W) or (n, H, W) in [0, 1]; returns the fitted classifier.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    arr = np.asarray(images, dtype=np.float32)
    clf = MLPClassifier(
        hidden_layer_sizes=(hidden,),
        alpha=1e-3,
        max_iter=60,
        early_stopping=True,
        n_iter_no_change=8,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(arr.reshape(len(arr), -1), np.asarray(digits).astype(str))


def digit_accuracy(classifier, images, digits: Sequence) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to their true ``digits``."""
    arr = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return float((classifier.predict(arr) == np.asarray(digits).astype(str)).mean())
