"""Figures of mask training, saved as PNG files.

Figures are drawn with `matplotlib.figure.Figure`, not `pyplot`, so they work
without a display and leave any open pyplot figures alone.
"""

import re

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from keras_mft import architectures

_BLOCK = re.compile(r"transformer_layer_(\d+)/")
_ALIAS_OF = {name: alias for alias, (name, _) in architectures.PROJECTIONS.items()}


def training_curve(losses, path, *, title="Mask fine-tuning"):
    """Saves the training loss at each step as a line plot.

    Args:
        losses: one loss per training step, e.g. the `"loss"` that Keras logs
            at the end of each batch (its running mean over the epoch).
        path: the PNG file to write.
        title: the figure's title.
    """
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.subplots()
    axes.plot(np.arange(1, len(losses) + 1), losses, marker=".")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("training step")
    axes.set_ylabel("Keras training loss\n(mean over the epoch so far)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)


def mask_change(before, after, path, *, title="Share of each mask that changed"):
    """Saves a heatmap of how much of each matrix's mask changed.

    One row per decoder block, one column per projection; each cell is the
    percentage of the matrix's mask entries that differ between `before` and
    `after`.

    Args:
        before, after: `{kernel path: mask}` from `keras_mft.masks_of`, taken
            e.g. before and after training.
        path: the PNG file to write.
        title: the figure's title.
    """
    if set(before) != set(after):
        raise ValueError("`before` and `after` must hold masks of the same kernels.")
    cells = {}
    for kernel_path in before:
        block = int(_BLOCK.search(kernel_path).group(1))
        alias = _ALIAS_OF[kernel_path.split("/")[-2]]
        cells[block, alias] = 100.0 * np.mean(before[kernel_path] != after[kernel_path])
    blocks = sorted({block for block, _ in cells})
    aliases = [alias for alias in architectures.PROJECTIONS if any(a == alias for _, a in cells)]
    grid = np.full((len(blocks), len(aliases)), np.nan)
    for (block, alias), value in cells.items():
        grid[blocks.index(block), aliases.index(alias)] = value

    figure = Figure(figsize=(1.0 + 0.9 * len(aliases), 1.2 + 0.5 * len(blocks)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(grid, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(aliases)), aliases)
    axes.set_yticks(range(len(blocks)), [f"block {block}" for block in blocks])
    for row, column in np.ndindex(grid.shape):
        if not np.isnan(grid[row, column]):
            axes.text(column, row, f"{grid[row, column]:.2f}", ha="center", va="center",
                      color="white", fontsize=8)
    figure.colorbar(image, ax=axes, label="% of mask entries changed")
    axes.set_title(title)
    figure.savefig(path, dpi=120)
