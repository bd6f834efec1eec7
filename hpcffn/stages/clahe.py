"""CLAHE (contrast-limited adaptive histogram equalisation) of a grayscale stack, slab by slab.

EM stacks drift in brightness and contrast across sections and within them (staining,
charging, section thickness); FFN recommends CLAHE so the network sees comparable local
contrast everywhere. scikit-image's 3-D `equalize_adapthist` does the work. A stack larger
than memory is processed in z-slabs, each read with a halo of two kernel depths on both sides
and starting at a multiple of the kernel depth, so every contextual region a kept slice uses
is the one the whole-volume computation would use: slabs leave no seams (the result matches
the whole-volume one to within a grey level; scikit-image stretches each call's input and
output range, which is the only difference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


def slab_plan(depth: int, step: int, kernel_z: int, halo: int | None = None):
    """(z0, z1, read_start, read_stop) per slab: kept range and the range read with its halo."""
    kernel_z = max(1, kernel_z)
    step = max(kernel_z, step // kernel_z * kernel_z)  # slab starts stay on the kernel grid
    halo = 2 * kernel_z if halo is None else halo
    for z0 in range(0, depth, step):
        z1 = min(depth, z0 + step)
        yield z0, z1, max(0, z0 - halo), min(depth, z1 + halo)


def clahe_slabs(read: Callable[[int, int], np.ndarray], depth: int, step: int, kernel_size, clip_limit: float,
                halo: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (z0, uint8 block) of the equalised stack; `read(a, b)` returns uint8 slices a..b."""
    from skimage.exposure import equalize_adapthist

    kernel = [int(k) for k in kernel_size]
    for z0, z1, a, b in slab_plan(depth, step, kernel[0], halo):
        block = read(a, b)
        out = equalize_adapthist(block, kernel_size=kernel, clip_limit=clip_limit)
        yield z0, np.round(out[z0 - a:z1 - a] * 255).astype(np.uint8)
