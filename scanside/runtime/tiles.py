"""Images larger than an engine: overlapping tiles, batched, fused with smooth weights.

Every stage runs on the same grid of tiles. The VAE encoder's and decoder's tile outputs are
blended into one latent / one image; in the scheduler loop the UNet's predictions for all
tiles are blended into one prediction of the whole latent *before* each scheduler step, so the
tiles share one latent at every step (MultiDiffusion, Bar-Tal et al. 2023: fusing per step,
not denoising tiles independently and stitching, which lets neighbours drift apart).

Tile corners sit on multiples of the engine's divisor (VAE factor x 2^UNet downsamplings), so
each tile's downsampling grid lines up with the whole image's: a convolutional model then
computes the same values inside a tile as on the whole image, and only the borders, where
zero padding differs, are blended away. Weights are raised-cosine ramps across each overlap
(none at the image's own edges): a pair of overlapping ramps sums to one, with no seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from scanside.errors import InputError


def axis_starts(size: int, tile: int, overlap: int, divisor: int) -> tuple[int, ...]:
    """Tile starts along one axis of ``size`` pixels: evenly spread, on multiples of
    ``divisor``, each overlapping the next by at least ``overlap``."""
    if size <= tile:
        return (0,)
    step = tile - overlap
    if step < divisor:
        raise InputError(f"tile overlap: {overlap} px leaves no step for {tile} px tiles; "
                         f"use an overlap below {tile - divisor}")
    count = -(-(size - overlap) // step)
    last = size - tile  # a multiple of the divisor: both sizes are
    starts = [int(round(i * last / (count - 1) / divisor)) * divisor for i in range(count)]
    return tuple(sorted(set(starts)))


def fitted_tile(size: int, tile: int, overlap: int, divisor: int) -> int:
    """The smallest tile, a multiple of ``divisor`` and at most ``tile``, that covers ``size``
    in as few tiles as ``tile`` itself would, each overlapping the next by ``overlap``."""
    count = max(1, -(-(size - overlap) // (tile - overlap)))
    need = -(-(size + (count - 1) * overlap) // count)
    return min(tile, -(-need // divisor) * divisor)


def ramp(tile: int, before: int, after: int) -> np.ndarray:
    """1-D weights of a tile of ``tile`` samples: a raised cosine rising over the ``before``
    samples it shares with the previous tile and falling over the ``after`` it shares with the
    next; 1 elsewhere."""
    w = np.ones(tile, np.float32)
    if before > 0:
        w[:before] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(before) + 0.5) / before)
    if after > 0:
        w[tile - after:] = np.minimum(
            w[tile - after:], 0.5 + 0.5 * np.cos(np.pi * (np.arange(after) + 0.5) / after))
    return w


def axis_weights(starts: Sequence[int], tile: int) -> list[np.ndarray]:
    out = []
    for i, s in enumerate(starts):
        before = starts[i - 1] + tile - s if i > 0 else 0
        after = s + tile - starts[i + 1] if i + 1 < len(starts) else 0
        out.append(ramp(tile, max(before, 0), max(after, 0)))
    return out


@dataclass(frozen=True)
class Grid:
    """Tiles of ``tile_h`` x ``tile_w`` pixels covering a ``height`` x ``width`` image."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def plan(cls, height: int, width: int, tile_h: int, tile_w: int, overlap: int,
             divisor: int) -> "Grid":
        if height % divisor or width % divisor or tile_h % divisor or tile_w % divisor:
            raise ValueError(f"Grid.plan: sizes {height}x{width}, tile {tile_h}x{tile_w} must "
                             f"be multiples of {divisor}")
        tile_h, tile_w = min(tile_h, height), min(tile_w, width)
        return cls(height, width, tile_h, tile_w,
                   axis_starts(height, tile_h, overlap, divisor),
                   axis_starts(width, tile_w, overlap, divisor))

    @property
    def corners(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def weights(self, scale: int) -> list[np.ndarray]:
        """Per tile (tile_h/scale, tile_w/scale) weights, in ``corners`` order."""
        wy = axis_weights([y // scale for y in self.ys], self.tile_h // scale)
        wx = axis_weights([x // scale for x in self.xs], self.tile_w // scale)
        return [a[:, None] * b[None, :] for a in wy for b in wx]


def run_tiled(fn: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]], x: np.ndarray,
              grid: Grid, in_scale: int, out_scale: int, max_batch: int) -> list[np.ndarray]:
    """Run ``fn`` over every tile of ``x`` (N, C, H/in_scale, W/in_scale) and fuse its outputs
    (each (b, C', tile/out_scale)) into whole arrays (N, C', H/out_scale, W/out_scale).

    ``fn(batch, rows)`` gets up to ``max_batch`` tiles stacked on axis 0 and, for each, the
    index of the sample of ``x`` it came from (so a guided UNet call can pair each tile with
    its prompt half)."""
    n = x.shape[0]
    th, tw = grid.tile_h // in_scale, grid.tile_w // in_scale
    oh, ow = grid.tile_h // out_scale, grid.tile_w // out_scale
    corners = grid.corners
    weights = grid.weights(out_scale)
    jobs = [(i, k) for i in range(n) for k in range(len(corners))]
    out_slices = [(slice(y // out_scale, y // out_scale + oh), slice(x0 // out_scale, x0 // out_scale + ow))
                  for y, x0 in corners]
    norm = np.zeros((grid.height // out_scale, grid.width // out_scale), np.float32)
    for (ys, xs), w in zip(out_slices, weights):
        norm[ys, xs] += w
    fused: list[np.ndarray] = []
    for start in range(0, len(jobs), max_batch):
        chunk = jobs[start : start + max_batch]
        batch = np.stack([x[i, :, corners[k][0] // in_scale : corners[k][0] // in_scale + th,
                            corners[k][1] // in_scale : corners[k][1] // in_scale + tw]
                          for i, k in chunk])  # (b, C, th, tw)
        outs = fn(batch, np.array([i for i, _ in chunk]))  # each (b, C', oh, ow)
        if not fused:
            fused = [np.zeros((n, o.shape[1], *norm.shape), np.float32) for o in outs]
        for j, (i, k) in enumerate(chunk):
            ys, xs = out_slices[k]
            for acc, o in zip(fused, outs):
                acc[i, :, ys, xs] += o[j] * weights[k]
    return [acc / norm for acc in fused]
