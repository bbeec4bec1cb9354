"""`ckpt log RUN`: a run's checkpoints in step order with their metrics, and a plot of the metrics over steps.

The plot marks the checkpoint tagged ``best`` and every other tagged one, because those are the ones retention
keeps: a glance shows whether the kept checkpoints sit where the curves say they should.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CkptError, InvalidArgument

if TYPE_CHECKING:
    from ._info import CheckpointInfo
    from .store import Store

MAX_PLOTTED_METRICS = 6


def run_log(store: "Store", run: str) -> list["CheckpointInfo"]:
    """The run's checkpoints, oldest step first (checkpoints without a step last, by save time)."""
    infos = store.list(run)
    if not infos:
        store.check_run(run)  # raises: an unknown run, with did-you-mean
    return sorted(infos, key=lambda c: (c.step is None, c.step or 0, c.created_at))


def metric_names(infos: list["CheckpointInfo"]) -> list[str]:
    """Metric names in the order checkpoints first record them (eval_loss before eval_accuracy if saved so)."""
    names: dict[str, None] = {}
    for c in infos:
        names.update(dict.fromkeys(c.metrics))
    return list(names)


def plot_run(infos: list["CheckpointInfo"], path: str | Path, *, title: str) -> Path:
    """Draw each metric over steps (one panel each) to a PNG; best as a star, other tagged checkpoints ringed."""
    metrics = metric_names(infos)[:MAX_PLOTTED_METRICS]
    if not metrics:
        raise InvalidArgument(
            f"No metrics to plot: the checkpoints of {title!r} record none.",
            hint="Save checkpoints with metrics (store.save(..., metrics={'eval_loss': 0.31}) or --metric).",
        )
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        raise CkptError("Plotting needs matplotlib.", hint="pip install 'ckptstore[plot]'") from None

    use_steps = all(c.step is not None for c in infos)
    xs = [c.step if use_steps else i for i, c in enumerate(infos)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.4 * len(metrics) + 0.6), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        points = [(x, c.metrics[metric], c) for x, c in zip(xs, infos) if metric in c.metrics]
        ax.plot([p[0] for p in points], [p[1] for p in points], "-o", color="tab:blue", markersize=3, lw=1.2,
                label=metric)
        for x, y, c in points:
            if "best" in c.tags:
                ax.plot(x, y, "*", color="gold", markeredgecolor="black", markersize=15, zorder=5)
            others = [t for t in c.tags if t != "best"]
            if others:
                ax.plot(x, y, "o", mfc="none", mec="tab:red", markersize=10, mew=1.6, zorder=4)
            label = ", ".join(c.tags)
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.margins(y=0.2)
    axes[-1, 0].set_xlabel("step" if use_steps else "checkpoint (in save order; no steps recorded)")
    from matplotlib.lines import Line2D

    legend = [
        Line2D([], [], color="tab:blue", marker="o", markersize=3, label="checkpoint"),
        Line2D([], [], ls="", marker="*", color="gold", markeredgecolor="black", markersize=12, label="best"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="tab:red", markersize=9, mew=1.6, label="tagged (kept)"),
    ]
    axes[0, 0].legend(handles=legend, loc="best", fontsize=8)
    fig.suptitle(f"{title}: {len(infos)} checkpoints")
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:  # no such folder, not writable, a format matplotlib does not write
        raise InvalidArgument(
            f"Cannot write the plot to {str(path)!r}: {str(exc).splitlines()[0]}",
            hint="Give a writable path ending in .png (or .pdf, .svg).",
        ) from None
    finally:
        plt.close(fig)
    return path
