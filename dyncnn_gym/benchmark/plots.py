"""Figures of the benchmark and the demo (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import savefig


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it atomically as ``path`` (PNG) and close it."""
    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    savefig(fig, path, dpi=dpi)
    plt.close(fig)
    return path


def plot_fronts(
    path: str | Path,
    title: str,
    static: dict[str, Any],
    learned: list[dict[str, Any]],
    extra: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Accuracy vs FLOPs ratio: static routes and their front against learned policies' points.

    ``learned`` points are grouped by ``"algorithm"``; a group is joined by a line, or drawn as
    faint markers when its points carry ``"scatter": True`` (e.g. single seeds around their mean),
    or as a dashed line when they carry ``"baseline": True``; a ``"color"`` key fixes the group's colour.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    for key, style in (("exhaustive", "."), ("greedy", "x"), ("uniform", "s"), ("exits", "D")):
        rows = static.get(key)
        if rows:
            ax.scatter(
                [r["flops_ratio"] for r in rows],
                [100 * r["accuracy"] for r in rows],
                marker=style,
                s=18,
                color="0.55",
                label=f"static ({key})",
            )
    front = static["front"]
    ax.plot([r["flops_ratio"] for r in front], [100 * r["accuracy"] for r in front], color="0.3", lw=1.2, label="static front")
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in learned:
        groups.setdefault(p.get("algorithm", "policy"), []).append(p)
    for name, pts in groups.items():
        pts = sorted(pts, key=lambda p: p["flops_ratio"])
        x, y = [p["flops_ratio"] for p in pts], [100 * p["accuracy"] for p in pts]
        style = {k: pts[0][k] for k in ("color",) if k in pts[0]}
        if any(p.get("scatter") for p in pts):  # single runs around a mean line: markers only
            ax.scatter(x, y, s=14, alpha=0.45, label=name, **style)
        elif pts[0].get("baseline"):  # a baseline's front (e.g. the confidence cascade): dashed, small markers
            ax.plot(x, y, "^--", ms=4, lw=1.0, label=name, **style)
        else:
            ax.plot(x, y, "o-", ms=6, label=name, **style)
    for name, p in (extra or {}).items():
        ax.scatter([p["flops_ratio"]], [100 * p["accuracy"]], marker="*", s=80, label=name)
    ax.set_xlabel("FLOPs ratio (used / full network)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_usage(path: str | Path, title: str, action_rates: list[list[float]], labels: list[str] | None = None) -> Path:
    """Heat map of how often each action is taken at each decision point."""
    plt = _plt()
    rates = np.asarray(action_rates).T  # [A, T]
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * rates.shape[1], 0.9 + 0.45 * rates.shape[0]))
    im = ax.imshow(rates, cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="lower")
    for (a, t), v in np.ndenumerate(rates):
        ax.text(t, a, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    ax.set_xlabel("decision point")
    ax.set_yticks(range(rates.shape[0]), labels or [str(a) for a in range(rates.shape[0])])
    ax.set_ylabel("action")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    path = Path(path)
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_difficulty(path: str | Path, title: str, by_difficulty: dict[str, list[dict[str, Any]]]) -> Path:
    """FLOPs ratio and accuracy per difficulty bin, one line per policy."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for name, rows in by_difficulty.items():
        mid = [(r["difficulty_lo"] + r["difficulty_hi"]) / 2 for r in rows]
        a1.plot(mid, [r["flops_ratio"] for r in rows], "o-", label=name)
        a2.plot(mid, [100 * r["accuracy"] for r in rows], "o-", label=name)
    a1.set_xlabel("difficulty (bin centre)")
    a1.set_ylabel("FLOPs ratio")
    a2.set_xlabel("difficulty (bin centre)")
    a2.set_ylabel("accuracy (%)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_image_grid(
    path: str | Path, title: str, images: np.ndarray, flops_ratio: np.ndarray, correct: np.ndarray, n: int = 8
) -> Path:
    """Test images sorted by the compute a policy spent on them: ``n`` cheapest (top), ``n`` around the
    median, ``n`` most expensive (bottom). ``images`` are raw ``[N, C, H, W]`` in ``[0, 1]``."""
    plt = _plt()
    order = np.argsort(flops_ratio, kind="stable")
    mid = len(order) // 2
    picks = [order[:n], order[mid - n // 2 : mid - n // 2 + n], order[-n:]]
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 4.2))
    names = ["cheapest", "median", "most compute"]
    for row, (idx, name) in enumerate(zip(picks, names)):
        for col, i in enumerate(idx):
            ax = axes[row, col]
            img = np.clip(images[i].transpose(1, 2, 0), 0, 1)
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
            ax.set_title(f"{flops_ratio[i]:.2f}{'' if correct[i] else ' x'}", fontsize=7, color="k" if correct[i] else "r")
            ax.axis("off")
        axes[row, 0].text(-0.3, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle(title + " (FLOPs ratio; x = misclassified)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
