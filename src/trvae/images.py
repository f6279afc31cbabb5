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

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage

from trvae._errors import TRVAEError, require

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

#: Ways of thinning and thickening. ``"disk"`` (default) is Morpho-MNIST's: the image is upscaled
#: ``MORPHO_SCALE`` times (bilinear), grey-scale eroded (thin) or dilated (thick) with a disk whose
#: radius is ``amount`` times half the digit's own stroke thickness (:func:`stroke_thickness`),
#: and block-averaged back; a relative, sub-pixel amount keeps thin digits whole. The fixed
#: footprints (``"cross"``, ``"square"``, ``"square2"``) move every stroke edge by whole pixels.
#: Measured thicknesses and classifier accuracies: ``docs/choosing-parameters.md``.
STRUCTURES: dict[str, np.ndarray | None] = {
    "disk": None,
    "cross": ndimage.generate_binary_structure(2, 1),
    "square": np.ones((3, 3), dtype=bool),
    "square2": np.ones((2, 2), dtype=bool),
}
#: Upscaling factor and default relative amount of the ``"disk"`` morphology.
MORPHO_SCALE, MORPHO_AMOUNT = 4, 0.5


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2


def _relative_morphology(images: np.ndarray, amount: float, operation) -> np.ndarray:
    """Morpho-MNIST's thinning/thickening of ``(n, H, W)`` images (see :data:`STRUCTURES`)."""
    n, h, w = images.shape
    s = MORPHO_SCALE
    radius = np.floor(amount * s * stroke_thickness(images) / 2).astype(int)
    # grid_mode: pixels are areas, so block-averaging the result lines up with the input
    hires = ndimage.zoom(images, (1, s, s), order=1, grid_mode=True, mode="grid-constant")
    out = hires.copy()
    for r in np.unique(radius[radius > 0]):  # one call per radius, not per image
        group = radius == r
        out[group] = operation(hires[group], footprint=_disk(r)[None], mode="constant", cval=0.0)
    return out.reshape(n, h, s, w, s).mean(axis=(2, 4))


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
    structure: str = "disk",
    digit_key: str = "digit",
    amount: float = MORPHO_AMOUNT,
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
        How :func:`scipy.ndimage.grey_erosion` / :func:`~scipy.ndimage.grey_dilation` are
        applied, a key of :data:`STRUCTURES`: ``"disk"`` (default, Morpho-MNIST's relative
        thinning/thickening at 4x resolution) or a fixed footprint (``"cross"``: one pixel off or
        onto every stroke edge).
    digit_key
        Column of ``obs`` with the labels.
    amount
        For ``"disk"``: the disk's radius as a fraction of half the digit's stroke thickness.

    Returns
    -------
    AnnData with ``3 n`` rows, X float32 (flattened), the blocks ``normal``, ``thin``,
    ``thick`` in this order; ``obs``: ``condition`` (categorical, categories
    :data:`CONDITIONS`), ``digit`` (when labels are known) and ``source_index`` (the row of the
    input image, so the row of the true version of any digit in any condition is known:
    ``source_index + k * n`` for block ``k``); ``uns``: ``image_shape`` and
    ``thickness_conditions`` (the footprint used).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.images import make_thickness_conditions, stroke_thickness
    >>> bar = np.zeros((1, 28, 28), dtype=np.float32)
    >>> bar[0, 6:22, 12:16] = 1.0  # a vertical stroke 4 pixels wide
    >>> data = make_thickness_conditions(bar)
    >>> data.obs["condition"].tolist()
    ['normal', 'thin', 'thick']
    >>> normal, thin, thick = stroke_thickness(data.X, (28, 28))
    >>> bool(thin < normal < thick)
    True
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
    footprint = STRUCTURES[structure]
    if footprint is None:  # "disk": relative to each digit's stroke
        if not 0 < amount < 2:
            raise TRVAEError(f"amount must be in (0, 2), got {amount}")
        # resampling blurs a little; erosion must never add ink, nor dilation remove it
        thin = np.minimum(_relative_morphology(images, amount, ndimage.grey_erosion), images)
        thick = np.maximum(_relative_morphology(images, amount, ndimage.grey_dilation), images)
        how = {"amount": float(amount), "scale": MORPHO_SCALE}
    else:
        per_image = footprint[None]  # no mixing across images
        thin = ndimage.grey_erosion(images, footprint=per_image, mode="constant", cval=0.0)
        thick = ndimage.grey_dilation(images, footprint=per_image, mode="constant", cval=0.0)
        how = {"footprint": footprint.astype(int).tolist()}
    blocks = {"normal": images, "thin": thin, "thick": thick}
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
        **how,
        "thin": "scipy.ndimage.grey_erosion",
        "thick": "scipy.ndimage.grey_dilation",
    }
    return out


# ---------------------------------------------------------------------------------- metrics
def pixel_mse(pred, true, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Mean squared pixel error of each image pair (rows of ``pred`` and ``true``).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.images import pixel_mse
    >>> pixel_mse(np.zeros((2, 4)), np.full((2, 4), 0.5))  # two 2 x 2 images
    array([0.25, 0.25])
    """
    a, _, _ = _as_images(pred, image_shape)
    b, _, _ = _as_images(true, image_shape)
    if a.shape != b.shape:
        raise TRVAEError(f"pred {a.shape} and true {b.shape} differ in shape")
    return ((a - b) ** 2).mean(axis=(1, 2)).astype(np.float64)


def ssim(pred, true, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Structural similarity of each image pair, ``data_range=1`` (1 for identical images).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.images import ssim
    >>> image = np.random.default_rng(0).random((1, 28, 28))
    >>> ssim(image, image).round(6)
    array([1.])
    """
    structural_similarity = require(
        "skimage.metrics", "images", "scikit-image", "ssim"
    ).structural_similarity

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

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.images import stroke_thickness
    >>> bar = np.zeros((1, 28, 28))
    >>> bar[0, 6:22, 12:16] = 1.0  # 16 pixels long, 4 wide
    >>> bool(3.5 < stroke_thickness(bar)[0] < 4.5)
    True
    """
    skeletonize = require(
        "skimage.morphology", "images", "scikit-image", "stroke_thickness"
    ).skeletonize

    arr, _, _ = _as_images(images, image_shape)
    out = np.zeros(len(arr))
    for i, image in enumerate(arr):
        binary = image > threshold
        area = binary.sum()
        if area:
            out[i] = area / max(int(skeletonize(binary).sum()), 1)
    return out


def train_digit_classifier(images, digits: Sequence, seed: int = 0):
    """An RBF support-vector classifier (``sklearn.svm.SVC``, C=10) fitted to labelled images.

    ``images`` are flattened (n, H*W) or (n, H, W) in [0, 1]; returns the fitted classifier
    (deterministic; ``seed`` is kept for callers that pass one). Its accuracy on normal, thin
    and thick digits: ``docs/choosing-parameters.md``.

    Examples
    --------
    >>> import trvae
    >>> from trvae.images import digit_accuracy, train_digit_classifier
    >>> digits = trvae.datasets.mnist()[::25]  # 200 digits, every class
    >>> labels = digits.obs["digit"].to_numpy()
    >>> classifier = train_digit_classifier(digits.X[::2], labels[::2])
    >>> bool(digit_accuracy(classifier, digits.X[1::2], labels[1::2]) > 0.6)
    True
    """
    from sklearn.svm import SVC

    arr = np.asarray(images, dtype=np.float32)
    clf = SVC(C=10.0, gamma="scale", random_state=seed)
    return clf.fit(arr.reshape(len(arr), -1), np.asarray(digits).astype(str))


def digit_accuracy(classifier, images, digits: Sequence) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to their true ``digits``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.dummy import DummyClassifier
    >>> always_one = DummyClassifier(strategy="constant", constant="1")
    >>> always_one = always_one.fit(np.zeros((2, 4)), ["1", "7"])
    >>> digit_accuracy(always_one, np.zeros((4, 4)), [1, 1, 7, 1])
    0.75
    """
    arr = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return float((classifier.predict(arr) == np.asarray(digits).astype(str)).mean())
