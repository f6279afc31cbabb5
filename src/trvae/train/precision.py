"""Numerical precision of training and inference: ``"32"`` or ``"bf16-mixed"`` (Lightning's names).

- ``"32"`` (default): everything in float32, bit for bit what trvae computed before the option.
- ``"bf16-mixed"``: the network's forward pass runs under :func:`torch.autocast` with
  ``dtype=torch.bfloat16`` (CPU and CUDA): the matrix products of the ``nn.Linear`` layers read
  bfloat16 copies of the float32 weights and activations and accumulate in float32. The weights,
  the gradients' destination, Adam's state and everything saved stay float32; the module's
  outputs (z, y, the likelihood's parameters) are cast back to float32, and the loss terms and
  the MMD kernel are computed in float32 outside autocast (:mod:`trvae.module.mmd`). The
  backward pass runs outside the autocast block, as torch recommends. No loss scaling is needed:
  bfloat16 has float32's exponent range.

On CPUs with AVX512-BF16 or AMX the bfloat16 matrix products are about twice as fast as float32
(``trvae bench speed --precision bf16-mixed``); on older CPUs bfloat16 is emulated and slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from trvae._errors import TRVAEError

PRECISIONS = ("32", "bf16-mixed")
#: Other spellings Lightning accepts for the same settings.
_ALIASES = {"32-true": "32", "bf16": "bf16-mixed"}


def check_precision(precision: str | int) -> str:
    """The canonical name of ``precision`` (``"32"`` or ``"bf16-mixed"``), or a TRVAEError.

    Also accepted: ``32`` (an integer) and ``"32-true"`` for ``"32"``; ``"bf16"`` for
    ``"bf16-mixed"``.
    """
    name = str(precision).strip().lower() if isinstance(precision, (str, int)) else None
    name = _ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise TRVAEError(
            f"precision must be one of {PRECISIONS}, got {precision!r} (half precision "
            "'16-mixed' is not supported: use 'bf16-mixed')"
        )
    return name


@contextmanager
def autocast(precision: str | int, device: torch.device | str) -> Iterator[None]:
    """Run the block at ``precision`` on ``device``'s type: nothing changes for ``"32"``,
    :func:`torch.autocast` to bfloat16 for ``"bf16-mixed"``."""
    if check_precision(precision) == "32":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield
