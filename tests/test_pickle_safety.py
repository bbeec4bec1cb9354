"""Weight pickles are read with torch's restricted unpickler only; anything beyond tensors is refused and never runs.

Each crafted file below would create a canary file if it were unpickled the ordinary way (each test proves that
on a control copy first, so the test can fail); imported, it is refused and the canary never appears.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from ckptstore import InvalidCheckpoint, UnsafePickle


class _Mkdir:
    """Unpickles as os.mkdir(path): the canary is a directory (no file handle left open)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _torch_zip(data_pkl: bytes) -> bytes:
    """A torch.save zip archive whose data.pkl is `data_pkl` (the format torch.load reads first)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info.filename, data_pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return out.getvalue()


def _legacy_format(payload: bytes) -> bytes:
    """torch's pre-1.6 format: magic number, protocol, sys info, then the object pickle."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info)) + payload


# name -> (pickle that creates `canary` when unpickled, how it is packaged as a weight file)
SHAPES = {
    # GLOBAL + REDUCE: the classic __reduce__ payload, inside a real torch zip archive.
    "reduce-open-in-zip": (lambda c: pickle.dumps({"w": _Mkdir(c)}, protocol=2), _torch_zip),
    # Protocol 4 STACK_GLOBAL/FRAME, as a bare pickle (no torch framing at all).
    "protocol4-bare-pickle": (lambda c: pickle.dumps(_Mkdir(c), protocol=4), lambda p: p),
    # INST: protocol 0 builds an object from a module global without GLOBAL/REDUCE.
    "inst-opcode": (lambda c: f"(S'{c}'\nios\nmkdir\n.".encode(), _torch_zip),
    # getattr chain through an allowed-looking module: torch.serialization.os.system("touch ...").
    "getattr-chain": (
        lambda c: (
            "cbuiltins\ngetattr\n(cbuiltins\ngetattr\n(ctorch\nserialization\nVos\ntRVsystem\ntR"
            f"(Vtouch {c}\ntR."
        ).encode(),
        _torch_zip,
    ),
    # The legacy (non-zip) format, whose separate pickles are where weights_only bypasses were found before.
    "legacy-format": (lambda c: pickle.dumps({"w": _Mkdir(c)}, protocol=2), _legacy_format),
}


def _crafted(name: str, canary: Path) -> bytes:
    make_pickle, package = SHAPES[name]
    return package(make_pickle(str(canary)))


def _model_folder(path: Path, weights: bytes, filename: str = "pytorch_model.bin") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (path / filename).write_bytes(weights)
    return path


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_crafted_weight_pickle_is_refused_and_never_runs(store, tmp_path, shape):
    # Control: unpickled the ordinary way, this payload does create its canary.
    control = tmp_path / "control-canary"
    pickled = SHAPES[shape][0](str(control))
    pickle.loads(pickled)
    assert control.exists()

    canary = tmp_path / "canary"
    folder = _model_folder(tmp_path / "evil-model", _crafted(shape, canary))
    with pytest.raises(UnsafePickle) as info:
        store.import_folder(folder)
    assert not canary.exists()
    assert info.value.message.startswith("Refused pytorch_model.bin:")
    assert "nothing in it was run" in info.value.message
    assert "weights_only=False" not in info.value.message + info.value.hint  # torch's advice is not passed on
    assert store.list() == []


def test_refusal_names_the_global_it_asked_for(store, tmp_path):
    folder = _model_folder(tmp_path / "m", _crafted("reduce-open-in-zip", tmp_path / "canary"))
    with pytest.raises(UnsafePickle, match=r"asks for '(posix|nt)\.mkdir'"):
        store.import_folder(folder)


def test_training_state_pickles_are_stored_verbatim_and_never_opened(store, tmp_path, tiny_bert):
    # Trainer writes these with plain torch.save; they are kept byte for byte. Were any opened, even safely,
    # the restricted unpickler would refuse it and the import would fail; opened unsafely, the canary appears.
    canary = tmp_path / "canary"
    folder = tmp_path / "checkpoint-10"
    tiny_bert().save_pretrained(folder)
    names = ["optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth", "training_args.bin", "scaler.pt"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(_crafted(sorted(SHAPES)[i % len(SHAPES)], canary))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": []}))

    report = store.import_folder(folder, run="run")
    assert [i.name for i in report.added] == ["run/step-10"]
    assert report.added[0].converted == ()
    assert not canary.exists()
    for name in names:
        assert store.read_file("run/step-10", name) == (folder / name).read_bytes()


def test_keep_pickles_stores_weights_verbatim_unread(store, tmp_path):
    canary = tmp_path / "canary"
    folder = _model_folder(tmp_path / "kept", _crafted("inst-opcode", canary))
    report = store.import_folder(folder, keep_pickles=True)
    assert report.added[0].converted == ()
    assert not canary.exists()
    manifest = store.manifest("kept")
    entry = manifest.file("pytorch_model.bin")
    assert entry is not None and entry.converted_from is None
    # Converting it later reads it, and reading is just as safe.
    with pytest.raises(UnsafePickle):
        store.convert("kept")
    assert not canary.exists()
    # So is loading it (through transformers' from_pretrained): refused by ckptstore's words, not torch's advice
    # to retry with weights_only=False, which would run the pickle.
    with pytest.raises(UnsafePickle) as info:
        store.load("kept")
    assert not canary.exists()
    assert "weights_only=False" not in info.value.message + (info.value.hint or "")


def test_safe_pickle_that_is_not_a_state_dict_is_kept_verbatim(store, tmp_path):
    buf = io.BytesIO()
    torch.save({"epoch": 3, "weights": [torch.zeros(2)]}, buf)
    folder = _model_folder(tmp_path / "odd", buf.getvalue())
    report = store.import_folder(folder)
    assert report.added[0].converted == ()
    assert any("kept pytorch_model.bin verbatim" in n for n in report.notes)
    assert hashlib.sha256(store.read_file("odd", "pytorch_model.bin")).digest() == hashlib.sha256(buf.getvalue()).digest()


def test_truncated_weight_file_is_an_invalid_checkpoint_not_an_unsafe_one(store, tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, buf)
    folder = _model_folder(tmp_path / "cut", buf.getvalue()[:200])
    with pytest.raises(InvalidCheckpoint) as info:
        store.import_folder(folder)
    assert not isinstance(info.value, UnsafePickle)
    assert "pytorch_model.bin cannot be read as a PyTorch weight file" in info.value.message


def test_cli_refuses_with_one_line_and_exit_1(ckpt, tmp_path):
    canary = tmp_path / "canary"
    folder = _model_folder(tmp_path / "evil", _crafted("getattr-chain", canary))
    result = ckpt("import", folder)
    assert result.code == 1
    assert "error: Refused pytorch_model.bin: it asks for 'getattr'" in result.err
    assert "Traceback" not in result.err
    assert not canary.exists()
