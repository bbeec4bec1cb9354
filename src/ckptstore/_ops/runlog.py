"""`ckpt log RUN`: a run's checkpoints in step order with their metrics, and a plot of the metrics over steps.

The plot marks the checkpoint tagged ``best`` (on the panel of the metric it is best by) and every other tagged one,
because those are the ones retention keeps: a glance shows whether the kept checkpoints sit where the curves say
they should. The curves come from the latest checkpoint's trainer_state.json when it has one (every logged step),
else from the stored checkpoints alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CkptError, InvalidArgument
from .load import read_stored_file

if TYPE_CHECKING:
    from .._core.info import CheckpointInfo
    from .._repo.repository import Repository

MAX_PLOTTED_METRICS = 6


def run_log(repo: "Repository", run: str) -> list["CheckpointInfo"]:
    """The run's checkpoints, oldest step first (checkpoints without a step last, by save time)."""
    infos = repo.catalog.infos(run=run)
    if not infos:
        repo.check_run(run)  # raises: an unknown run, with did-you-mean
    return sorted(infos, key=lambda c: (c.step is None, c.step or 0, c.created_at))


def metric_names(infos: list["CheckpointInfo"]) -> list[str]:
    """Metric names in the order checkpoints first record them (eval_loss before eval_accuracy if saved so)."""
    names: dict[str, None] = {}
    for c in infos:
        names.update(dict.fromkeys(c.metrics))
    return list(names)


def best_metric(repo: "Repository", run: str) -> str:
    """The metric ``RUN:best`` follows: the run's setting, else its policy's metric, else eval_loss."""
    from .retention import RunSettings, read_settings

    return (read_settings(repo, run) or RunSettings()).best[0]


# Keys of a Trainer log_history entry that are bookkeeping, not curves worth a panel.
_NOT_CURVES = ("epoch", "step", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
               "train_loss", "grad_norm", "learning_rate")


def run_history(repo: "Repository", infos: list["CheckpointInfo"]) -> list[dict]:
    """The Trainer ``log_history`` of the run's latest checkpoint (its trainer_state.json), or [] when it has none.

    The latest checkpoint's history holds every logged step of the run up to it (training loss every
    logging_steps, each evaluation), far more points than the checkpoints that were kept."""
    import json

    latest = max((c for c in infos if c.step is not None), key=lambda c: c.step, default=None)
    if latest is None:
        return []
    try:
        state = json.loads(read_stored_file(repo.blobs, repo.read_manifest(latest.id), "trainer_state.json"))
    except (CkptError, ValueError):
        return []
    history = state.get("log_history") if isinstance(state, dict) else None
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("step"), int)] if isinstance(history, list) else []


def _history_curves(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        for key, value in entry.items():
            if key in _NOT_CURVES or key.endswith(("_runtime", "_per_second")):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(key, []).append((entry["step"], float(value)))
    return curves


def run_figure(infos: list["CheckpointInfo"], *, title: str, best: str = "eval_loss", history: list[dict] = ()):
    """The figure `plot_run` writes: one panel per metric, the run's logged curves (``history``: Trainer's
    log_history, e.g. the training loss every logging step) as thin lines, stored checkpoints as dots on them, the
    ``best`` checkpoint starred on the panel of `best` (the metric it is best by) and other tagged ones ringed."""
    curves = _history_curves(list(history))
    names = list(dict.fromkeys(["loss", *metric_names(infos)] if "loss" in curves else metric_names(infos)))
    names += [k for k in curves if k not in names]
    metrics = names[:MAX_PLOTTED_METRICS]
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
    # A best checkpoint is best by one metric: star it there only. When that metric has no panel (a hand-set tag
    # on a run without it), star it wherever it appears, as a tag should still show.
    star_on = {best} if best in metrics else set(metrics)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.4 * len(metrics) + 0.6), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        if use_steps and metric in curves:
            ax.plot([p[0] for p in curves[metric]], [p[1] for p in curves[metric]], "-", color="tab:gray", lw=1,
                    alpha=0.8, label="logged")
        points = [(x, c.metrics[metric], c) for x, c in zip(xs, infos) if metric in c.metrics]
        if not points and use_steps and metric in curves:  # e.g. the training loss: on the curve at each stored step
            logged = dict(curves[metric])
            points = [(x, logged[x], c) for x, c in zip(xs, infos) if x in logged]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o" if metric in curves else "-o", color="tab:blue",
                markersize=4, lw=1.2, label=metric)
        for x, y, c in points:
            if "best" in c.tags and metric in star_on:
                ax.plot(x, y, "*", color="gold", markeredgecolor="black", markersize=15, zorder=5)
            others = [t for t in c.tags if t != "best"]
            if others:
                ax.plot(x, y, "o", mfc="none", mec="tab:red", markersize=10, mew=1.6, zorder=4)
            label = ", ".join(t for t in c.tags if t != "best" or metric in star_on)
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.margins(y=0.2)
    axes[-1, 0].set_xlabel("step" if use_steps else "checkpoint (in save order; no steps recorded)")
    from matplotlib.lines import Line2D

    legend = [
        Line2D([], [], color="tab:blue", marker="o", markersize=3, label="stored checkpoint"),
        Line2D([], [], ls="", marker="*", color="gold", markeredgecolor="black", markersize=12, label=f"best ({best})"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="tab:red", markersize=9, mew=1.6, label="tagged (kept)"),
    ]
    if curves and use_steps:
        legend.insert(0, Line2D([], [], color="tab:gray", lw=1, label="logged (trainer_state.json)"))
    axes[0, 0].legend(handles=legend, loc="best", fontsize=8)
    fig.suptitle(f"{title}: {len(infos)} checkpoints")
    fig.tight_layout()
    return fig


def plot_run(infos: list["CheckpointInfo"], path: str | Path, *, title: str, best: str = "eval_loss",
             history: list[dict] = ()) -> Path:
    """Write `run_figure` to a PNG (or .pdf, .svg)."""
    import matplotlib.pyplot as plt

    fig = run_figure(infos, title=title, best=best, history=history)
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


def plot(repo: "Repository", run: str, path: str | Path) -> Path:
    """`ckpt log RUN --plot PATH`: the run's checkpoints and its logged history, best starred on its own metric."""
    infos = run_log(repo, run)
    return plot_run(infos, path, title=run, best=best_metric(repo, run), history=run_history(repo, infos))
