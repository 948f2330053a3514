"""Figures of the case study (matplotlib, the optional ``plot`` extra): layer x head heatmaps (paper
Figures 1, 2, 3, 5), the Table 1 scatter with its best-fit line and the coupling's predicted slope, the
Figure 4 MLP curve, and bar charts (Figures 6-7, Tables 2-3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'refimpl-obsprop[plot]'") from exc
    return plt


def text_colour(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell's colour)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def heatmap(values: np.ndarray, title: str, path: str | Path, cmap: str = "viridis", centred: bool = False,
            label: str = "value") -> Path:
    """A layer x head heatmap with the value of every cell written in it and a labelled colorbar."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(2.0 + 0.9 * values.shape[1], 1.2 + 0.6 * values.shape[0]))
    limit = float(np.nanmax(np.abs(values))) if centred else None
    image = ax.imshow(values, cmap="RdBu_r" if centred else cmap, aspect="auto",
                      vmin=-limit if centred else None, vmax=limit)
    for (l, h), v in np.ndenumerate(values):
        ax.text(h, l, f"{v:.2g}", ha="center", va="center", fontsize=7, color=text_colour(image.cmap(image.norm(v))))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax).set_label(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def scatter_fit(x: np.ndarray, y: np.ndarray, slope: float, intercept: float, coupling: float, title: str,
                xlabel: str, ylabel: str, path: str | Path) -> Path:
    """Every point (paper Table 1) with the least-squares line and, beside it, the line of slope C (the
    coupling coefficient, Theorem 2's prediction) through the points' mean."""
    plt = _pyplot()
    x, y = np.asarray(x, float), np.asarray(y, float)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.scatter(x, y, s=8, alpha=0.5, label=f"{len(x)} tokens")
    grid = np.linspace(x.min(), x.max(), 2)
    ax.plot(grid, slope * grid + intercept, color="C3", label=f"best fit, slope {slope:.4f}")
    ax.plot(grid, coupling * (grid - x.mean()) + y.mean(), "--", color="black",
            label=f"coupling C = {coupling:.4f} (predicted slope)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def mlp_curve(table, title: str, path: str | Path) -> Path:
    """y . MLP along the segment, its linearisations, and the linearisation point (paper Figure 4)."""
    plt = _pyplot()
    t = table.column("t")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(t, table.column("actual"), label="actual y . MLP(x)", color="black")
    for key, style in (("boundary", "-"), ("x_neg", "--"), ("x_pos", ":")):
        ax.plot(t, table.column(f"linear_at_{key}"), style, label=f"linearised at {key}")
    boundary = next(row for row in table if row["is_boundary"])
    ax.plot([boundary["t"]], [boundary["actual"]], "o", color="C3", label=f"linearisation point t = {boundary['t']:.3f}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("t  (x = (1 - t) x_neg + t x_pos)")
    ax.set_ylabel("y . MLP(x)  (logits, through the head's feature)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def bars(labels, series: dict, title: str, ylabel: str, path: str | Path) -> Path:
    """Grouped bars: one group per label, one bar per series (e.g. -k v and +k v)."""
    plt = _pyplot()
    labels = list(labels)
    index = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(labels) * max(1, len(series)) + 1.5), 3.8))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(index + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(index)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
