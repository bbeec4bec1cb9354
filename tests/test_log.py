"""`ckpt log RUN`: checkpoints in step order with metrics, as a table, as JSON, and as a plot with best and tagged
checkpoints marked."""

from __future__ import annotations

import json

import pytest

from ckptstore.errors import CheckpointNotFound

LOSSES = {300: 0.52, 100: 0.91, 400: 0.47, 200: 0.63, 500: 0.49}


@pytest.fixture
def run_store(store, tiny_bert):
    """One run saved out of step order, each checkpoint with eval_loss and (from step 200) accuracy; step 400 is
    the run's best (tagged by the store) and step 200 tagged v1."""
    model = tiny_bert()
    for step, loss in LOSSES.items():
        metrics = {"eval_loss": loss, **({"eval_accuracy": 1 - loss / 2} if step >= 200 else {})}
        store.save(model, f"bert/step-{step}", metrics=metrics)
    store.tag("bert/step-200", "v1")
    return store


def test_log_lists_checkpoints_in_step_order(run_store, ckpt):
    assert [c.step for c in run_store.log("bert")] == sorted(LOSSES)
    result = ckpt("log", "bert")
    assert result.code == 0
    lines = result.out.splitlines()
    header = lines[0].split()
    assert header[:5] == ["STEP", "NAME", "ID", "CREATED", "TAGS"] and header[5:] == ["eval_loss", "eval_accuracy"]
    rows = [line.split() for line in lines[1:]]
    assert [int(r[0]) for r in rows] == sorted(LOSSES)
    row400 = next(r for r in rows if r[0] == "400")
    assert "best" in row400 and "0.47" in row400 and "0.765" in row400

    data = json.loads(ckpt("log", "bert", "--json").out)
    assert [(c["step"], c["metrics"]["eval_loss"]) for c in data] == sorted(LOSSES.items())
    assert next(c for c in data if c["step"] == 200)["tags"] == ["v1"]
    assert "eval_accuracy" not in data[0]["metrics"]


def test_plot_writes_a_png(run_store, ckpt, tmp_path):
    import matplotlib.image

    path = tmp_path / "curves.png"
    result = ckpt("log", "bert", "--plot", str(path))
    assert result.code == 0 and f"Plot written to {path}" in result.err.replace("\n", "")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 600 and height > 400  # two metric panels stacked


def test_unknown_run_suggests_a_close_one(run_store, ckpt):
    with pytest.raises(CheckpointNotFound) as exc:
        run_store.log("bret")
    assert exc.value.candidates == ("bert",)
    result = ckpt("log", "bret")
    assert result.code == 1 and "Unknown run 'bret'. Did you mean 'bert'?" in result.err and "hint:" in result.err
    # ls of an unknown run says so too, instead of printing an empty table.
    listed = ckpt("ls", "bret")
    assert listed.code == 1 and "Unknown run 'bret'. Did you mean 'bert'?" in listed.err and listed.out == ""


def test_plot_to_a_path_it_cannot_write_is_a_usage_error(run_store, ckpt, tmp_path):
    for path in (tmp_path / "no" / "such" / "dir" / "x.png", tmp_path / "curves.txt"):
        result = ckpt("log", "bert", "--plot", str(path))
        assert result.code == 2 and "Cannot write the plot to" in result.err, result.err
        assert "report it" not in result.err and not path.exists()


def test_plot_without_metrics_says_so(store, tiny_bert, ckpt, tmp_path):
    store.save(tiny_bert(), "plain/step-1")
    assert ckpt("log", "plain").code == 0
    result = ckpt("log", "plain", "--plot", str(tmp_path / "x.png"))
    assert result.code == 2 and "No metrics to plot" in result.err
    assert not (tmp_path / "x.png").exists()
