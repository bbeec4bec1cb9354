"""`ckpt log RUN --plot`: the best checkpoint is starred on the panel of the metric it is best by only, and the run's
logged curves (trainer_state.json of the latest checkpoint: the training loss at every logging step, each
evaluation) are drawn with the stored checkpoints marked on them. Checked on the real matplotlib figure."""

from __future__ import annotations

import json

import pytest

from ckptstore._ops.runlog import best_metric, run_figure, run_history, run_log

pytest.importorskip("matplotlib")

STEPS = {10: 0.70, 20: 0.52, 30: 0.58}  # eval_loss of the stored checkpoints; step 20 is the best


def _trainer_state(upto: int) -> bytes:
    history = []
    for step in range(2, upto + 1, 2):  # the training loss every 2 steps, an evaluation every 10
        history.append({"step": step, "epoch": step / 30, "loss": 2.0 / step, "grad_norm": 1.0, "learning_rate": 1e-3})
        if step in STEPS:
            history.append({"step": step, "epoch": step / 30, "eval_loss": STEPS[step], "eval_accuracy": 1 - STEPS[step],
                            "eval_runtime": 0.1, "eval_samples_per_second": 100.0})
    return json.dumps({"global_step": upto, "log_history": history}).encode()


@pytest.fixture
def trained(store, tiny_bert):
    model = tiny_bert()
    for step, loss in STEPS.items():
        store.save(model, f"run/step-{step}", metrics={"eval_loss": loss, "eval_accuracy": 1 - loss},
                   extra_files={"trainer_state.json": _trainer_state(step)})
    return store


def _stars(ax) -> list[tuple[float, float]]:
    return [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines() if line.get_marker() == "*"]


def _figure(store):
    import matplotlib.pyplot as plt

    infos = run_log(store._repo, "run")
    fig = run_figure(infos, title="run", best=best_metric(store._repo, "run"), history=run_history(store._repo, infos))
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
    return fig, panels, plt


def test_best_is_starred_only_on_its_own_metric(trained):
    fig, panels, plt = _figure(trained)
    try:
        assert _stars(panels["eval_loss"]) == [(20, 0.52)]
        assert _stars(panels["eval_accuracy"]) == []
        assert _stars(panels["loss"]) == []
    finally:
        plt.close(fig)


def test_logged_curves_of_the_latest_checkpoint_are_plotted_with_stored_checkpoints_marked(trained):
    fig, panels, plt = _figure(trained)
    try:
        assert list(panels)[:3] == ["loss", "eval_loss", "eval_accuracy"]
        assert not {"grad_norm", "learning_rate", "epoch", "eval_runtime"} & set(panels)  # bookkeeping, not curves
        loss_lines = panels["loss"].get_lines()
        logged = next(line for line in loss_lines if line.get_label() == "logged")
        assert list(logged.get_xdata()) == list(range(2, 31, 2))  # every logged step, not only the stored ones
        stored = next(line for line in loss_lines if line.get_label() == "loss")
        assert list(stored.get_xdata()) == sorted(STEPS)  # the checkpoints, on the curve
        assert list(stored.get_ydata()) == pytest.approx([2.0 / s for s in sorted(STEPS)])
    finally:
        plt.close(fig)


def test_cli_plot_uses_the_history(trained, ckpt, tmp_path):
    path = tmp_path / "curves.png"
    result = ckpt("log", "run", "--plot", str(path), store=trained.root)
    assert result.code == 0, result.err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
