"""Figures of the case study (matplotlib, the optional ``plot`` extra): layer x head heatmaps (paper
Figures 1, 2, 3, 5), the Table 1 scatter with its best-fit line, and the Figure 4 MLP curve."""

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


def heatmap(values: np.ndarray, title: str, path: str | Path, cmap: str = "viridis", centred: bool = False) -> Path:
    """A layer x head heatmap with the value of every cell written in it."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * values.shape[1], 1.0 + 0.6 * values.shape[0]))
    limit = float(np.nanmax(np.abs(values))) if centred else None
    image = ax.imshow(values, cmap="RdBu_r" if centred else cmap, aspect="auto",
                      vmin=-limit if centred else None, vmax=limit)
    for (l, h), v in np.ndenumerate(values):
        ax.text(h, l, f"{v:.2g}", ha="center", va="center", fontsize=7, color="black" if centred else "white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def scatter_fit(x: np.ndarray, y: np.ndarray, slope: float, intercept: float, title: str, xlabel: str, ylabel: str,
                path: str | Path) -> Path:
    """Scores against scores with the least-squares line (paper Table 1)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(x, y, s=8, alpha=0.6)
    grid = np.linspace(np.min(x), np.max(x), 2)
    ax.plot(grid, slope * grid + intercept, color="C3", label=f"slope {slope:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def mlp_curve(table, title: str, path: str | Path) -> Path:
    """y . MLP along the segment and its linearisations (paper Figure 4)."""
    plt = _pyplot()
    t = table.column("t")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(t, table.column("actual"), label="actual", color="black")
    for key, style in (("boundary", "-"), ("x_neg", "--"), ("x_pos", ":")):
        ax.plot(t, table.column(f"linear_at_{key}"), style, label=f"linear at {key}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("t  (x = (1 - t) x_neg + t x_pos)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
