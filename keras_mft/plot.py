"""Figures of mask training, saved as PNG files.

Figures are drawn with `matplotlib.figure.Figure`, not `pyplot`, so they work
without a display and leave any open pyplot figures alone. Each function
saves its figure and returns it (a notebook displays a returned figure).
"""

import re

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from keras_mft.masking import architectures

# The block's index ends its name: transformer_layer_3 (Llama), decoder_block_3 (Gemma).
_BLOCK = re.compile(r"^[^/]*_(\d+)/")


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
    return figure


def mask_change(before, after, path, *, title="Share of each mask that changed"):
    """Saves a heatmap of how much of each matrix's mask changed.

    One row per decoder block, one column per projection; each cell is the
    percentage of the matrix's mask entries that differ between `before` and
    `after`.

    Args:
        before: `{kernel path: mask}` from `keras_mft.masks_of`, taken e.g.
            before training.
        after: the same kernels' masks, e.g. after training.
        path: the PNG file to write.
        title: the figure's title.
    """
    if set(before) != set(after):
        raise ValueError("`before` and `after` must hold masks of the same kernels.")
    cells = {}
    for kernel_path in before:
        block = int(_BLOCK.search(kernel_path).group(1))
        alias = architectures.alias_of_layer_name(kernel_path.split("/")[-2])
        cells[block, alias] = 100.0 * np.mean(before[kernel_path] != after[kernel_path])
    blocks = sorted({block for block, _ in cells})
    aliases = [alias for alias in architectures.ALIASES if any(a == alias for _, a in cells)]
    grid = np.full((len(blocks), len(aliases)), np.nan)
    for (block, alias), value in cells.items():
        grid[blocks.index(block), aliases.index(alias)] = value

    figure = Figure(
        figsize=(1.0 + 0.9 * len(aliases), 1.2 + 0.5 * len(blocks)), layout="constrained"
    )
    axes = figure.subplots()
    image = axes.imshow(grid, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(aliases)), aliases)
    axes.set_yticks(range(len(blocks)), [f"block {block}" for block in blocks])
    for row, column in np.ndindex(grid.shape):
        if not np.isnan(grid[row, column]):
            axes.text(
                column,
                row,
                f"{grid[row, column]:.2f}",
                ha="center",
                va="center",
                color="white",
                fontsize=8,
            )
    figure.colorbar(image, ax=axes, label="% of mask entries changed")
    axes.set_title(title)
    figure.savefig(path, dpi=120)
    return figure


def mask_flips(history, path, *, title="How the masks moved"):
    """Saves `mask_flips` and `mask_changed` over training as a line plot.

    Args:
        history: the `History` that `model.fit` returns with a
            `keras_mft.MaskFineTuner` among its callbacks, or its `.history`
            dict (one value per epoch).
        path: the PNG file to write.
        title: the figure's title.
    """
    logs = getattr(history, "history", history)
    missing = [name for name in ("mask_flips", "mask_changed") if name not in logs]
    if missing:
        raise ValueError(
            f"The history has no {' or '.join(missing)}: train with "
            "`callbacks=[keras_mft.MaskFineTuner()]` to record them."
        )
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.subplots()
    epochs = np.arange(1, len(logs["mask_flips"]) + 1)
    axes.plot(
        epochs,
        100 * np.asarray(logs["mask_flips"]),
        marker="o",
        label="changed since the last report",
    )
    axes.plot(
        epochs, 100 * np.asarray(logs["mask_changed"]), marker="o", label="changed since the start"
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("% of mask entries")
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    return figure


def score_histogram(scores, masks, path, *, bins=100, title="Scores of kept and removed weights"):
    """Saves histograms of the scores of kept and of removed entries.

    Args:
        scores: `{kernel path: scores}`, e.g. from `keras_mft.scores_of`.
        masks: `{kernel path: mask}` of the same kernels, from
            `keras_mft.masks_of`.
        path: the PNG file to write.
        bins: the number of histogram bins.
        title: the figure's title.
    """
    if set(scores) != set(masks):
        raise ValueError("`scores` and `masks` must hold the same kernels.")
    values = np.concatenate([np.ravel(scores[name]) for name in scores])
    kept = np.concatenate([np.ravel(masks[name]) for name in scores]).astype(bool)
    edges = np.histogram_bin_edges(values, bins=bins)
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.subplots()
    axes.hist(values[kept], bins=edges, alpha=0.7, label=f"kept ({kept.sum():,})")
    axes.hist(values[~kept], bins=edges, alpha=0.7, label=f"removed ({(~kept).sum():,})")
    axes.set_yscale("log")
    axes.set_xlabel("score")
    axes.set_ylabel("entries (log scale)")
    axes.set_title(title)
    axes.legend()
    figure.savefig(path, dpi=120)
    return figure
