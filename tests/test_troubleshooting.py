"""The problems users meet when loading, each as one line and a hint: an unknown reference, a folder without
config.json, weights that do not match their config, a checkpoint from a newer transformers, not enough memory;
and the memory options (`device_map`, `dtype`, `low_cpu_mem_usage`, `offload_folder`) passed through on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from ckptstore.errors import (
    CheckpointNotFound,
    CompatibilityWarning,
    IncompleteCheckpoint,
    InvalidCheckpoint,
    ShapeMismatch,
)

IDS = torch.tensor([[5, 17, 3, 42, 8]])


def save_with_config(store, model, folder, name, **changes):
    """Store `model` as save_pretrained writes it, with config.json edited as a user (or a newer library) might."""
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    store.save(folder, name)


def test_unknown_reference_suggests_the_close_name(store, tiny_bert, ckpt):
    store.save(tiny_bert(), "bert/step-500")
    with pytest.raises(CheckpointNotFound) as exc:
        store.load("bert/step-50")
    assert "Did you mean 'bert/step-500'?" in exc.value.message and exc.value.hint == "Run 'ckpt ls bert' to see what is stored."
    result = ckpt("validate", "bert/step-50")
    assert result.code == 1
    assert result.err.splitlines() == [
        "error: Unknown reference 'bert/step-50'. Did you mean 'bert/step-500'?",
        "hint: Run 'ckpt ls bert' to see what is stored.",
    ]


def test_folder_without_config_is_an_incomplete_checkpoint(store, tiny_bert_dir, ckpt):
    (tiny_bert_dir / "config.json").unlink()
    with pytest.raises(IncompleteCheckpoint, match="no config.json"):
        store.save(tiny_bert_dir, "bert/broken")
    result = ckpt("save", str(tiny_bert_dir), "bert/broken")
    assert result.code == 1
    assert "Incomplete checkpoint" in result.err and "hint: " in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("materialize", [False, True])
def test_weights_that_do_not_match_the_config_name_the_tensor(store, tiny_bert, tmp_path, materialize):
    save_with_config(store, tiny_bert(), tmp_path / "mismatch", "bert/mismatch", vocab_size=120)  # weights: 99
    with pytest.raises(ShapeMismatch) as exc:
        store.load("bert/mismatch", materialize=materialize)
    err = exc.value
    assert (err.tensor, err.checkpoint_shape, err.model_shape) == ("embeddings.word_embeddings.weight", (99, 32), (120, 32))
    assert "\n" not in err.message and "'embeddings.word_embeddings.weight' has shape [99, 32]" in err.message
    assert "ignore_mismatched_sizes" in err.hint
    # The caller's own choice still wins, and loading info is still theirs to ask for.
    model, info = store.load("bert/mismatch", ignore_mismatched_sizes=True, output_loading_info=True,
                             materialize=materialize)
    assert model.embeddings.word_embeddings.weight.shape == (120, 32)
    assert [k[0] for k in info["mismatched_keys"]] == ["embeddings.word_embeddings.weight"]


def test_newer_transformers_warns_on_load_and_in_validate(store, tiny_bert, tmp_path):
    save_with_config(store, tiny_bert(), tmp_path / "newer", "bert/newer", transformers_version="99.0.0")
    with pytest.warns(CompatibilityWarning, match=r"saved by transformers 99\.0\.0, newer than the installed"):
        model = store.load("bert/newer")
    assert model(input_ids=IDS).last_hidden_state.shape == (1, 5, 32)
    # It loads and runs, so validate passes, with the version gap as a warning.
    report = store.validate("bert/newer")
    assert report.ok and report.compatibility.newer
    assert any("saved by transformers 99.0.0, newer than the installed" in w.message for w in report.warnings)


def test_failure_of_a_newer_checkpoint_blames_the_version(store, tiny_bert, tmp_path):
    # An activation added in a later transformers: the installed one cannot build the model.
    save_with_config(store, tiny_bert(), tmp_path / "future", "bert/future", transformers_version="99.0.0",
                     hidden_act="gelu_from_the_future")
    with pytest.warns(CompatibilityWarning), pytest.raises(InvalidCheckpoint) as exc:
        store.load("bert/future")
    assert exc.value.message.startswith("Cannot load 'bert/future': it was saved by transformers 99.0.0, newer than")
    assert "gelu_from_the_future" in exc.value.message and "\n" not in exc.value.message
    assert exc.value.hint.startswith("Upgrade transformers")


@pytest.mark.slow  # a subprocess that imports torch and transformers
def test_not_enough_memory_suggests_dtype_and_device_map(store, tiny_bert, tmp_path):
    # A real allocation failure: a subprocess caps its address space just above what it already uses, then loads
    # a checkpoint with ~16 MB of weights.
    store.save(tiny_bert(vocab_size=16000, hidden_size=256, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64), "big/v1")
    script = textwrap.dedent(f"""
        import resource
        from ckptstore import Store
        from ckptstore.errors import OutOfMemory
        store = Store.open({str(store.root)!r})
        store.manifest("big/v1")
        import transformers.models.bert.modeling_bert  # everything imported before the cap
        status = open("/proc/self/status").read()
        vm = int(next(l for l in status.splitlines() if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (8 << 20), vm + (8 << 20)))
        try:
            store.load("big/v1")
        except OutOfMemory as exc:
            print("MESSAGE", exc.message)
            print("HINT", exc.hint)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"MALLOC_ARENA_MAX": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("MESSAGE", "HINT")))
    assert lines, proc.stdout + proc.stderr
    assert lines["MESSAGE"].startswith("Not enough memory to load 'big/v1' (")
    assert "dtype=torch.bfloat16" in lines["HINT"] and "device_map='auto'" in lines["HINT"]


def test_memory_options_pass_through_on_cpu(store, tiny_bert, tmp_path):
    model = tiny_bert()
    store.save(model, "bert/v1")
    with torch.inference_mode():
        expected = model(input_ids=IDS).last_hidden_state

    half = store.load("bert/v1", device_map="auto", dtype=torch.bfloat16, low_cpu_mem_usage=True)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in half.parameters()} == {"cpu"}
    with torch.inference_mode():
        got = half(input_ids=IDS).last_hidden_state.float()
    assert torch.allclose(got, expected, atol=0.1)

    # A CPU budget of a few KB forces accelerate to offload the weights to disk, into offload_folder.
    for materialize in (False, True):
        offload = tmp_path / f"offload-{materialize}"
        spilled = store.load("bert/v1", device_map="auto", max_memory={"cpu": 20_000}, offload_folder=str(offload),
                             materialize=materialize)
        assert "disk" in set(spilled.hf_device_map.values())
        assert any(offload.rglob("*.safetensors"))
        with torch.inference_mode():  # offloaded weights are read back from disk here, after the load returned
            assert torch.allclose(spilled(input_ids=IDS).last_hidden_state, expected, atol=1e-5)


def test_a_config_that_is_not_json_and_a_folder_without_weights_get_named_errors(store, tiny_bert_dir, tmp_path):
    """Both once surfaced as a bare JSONDecodeError and an OSError naming a temporary folder."""
    from ckptstore.errors import IncompleteCheckpoint, InvalidCheckpoint

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", oops}')
    (broken / "model.safetensors").write_bytes((tiny_bert_dir / "model.safetensors").read_bytes())
    store.save(broken, "b/broken")
    for call in (lambda: store.load("b/broken"), lambda: store.validate("b/broken"),
                 lambda: store.diff("b/broken", "b/broken")):
        with pytest.raises(InvalidCheckpoint, match="config.json of 'b/broken' is not valid JSON"):
            call()
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_bytes((tiny_bert_dir / "config.json").read_bytes())
    store.save(weightless, "b/weightless")
    with pytest.raises(IncompleteCheckpoint, match="no weights from_pretrained can load") as info:
        store.load("b/weightless")
    assert "ckpt-load" not in info.value.message  # not the temporary folder it was loaded through
