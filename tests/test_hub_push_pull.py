"""`ckpt push` / `ckpt pull` through huggingface_hub's real HfApi and snapshot_download, against the Hub-compatible
server of tests/hubserver.py on 127.0.0.1 (what is pushed is kept on its disk), and from a local hub cache made by
huggingface_hub's own download code. Errors: a repository or revision that does not exist, no token, a push killed
mid-upload."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants, snapshot_download

from hubserver import TOKEN, UPLOAD_WARNING, hub, online  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings(UPLOAD_WARNING)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved(store, tiny_bert):
    """A stored checkpoint with metrics and a message, as a push publishes it."""
    store.save(tiny_bert(cls_name="BertForSequenceClassification", num_labels=2), "sst2/step-10",
               metrics={"eval_loss": 0.42, "eval_accuracy": 0.81}, message="Sentiment of short reviews.")
    return store.info("sst2/step-10")


def exported(store, ref: str, dest: Path) -> dict[str, bytes]:
    store.export(ref, dest)
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def everything_stored(store_root: Path) -> str:
    """Every document of the store (manifests, annotations, ...) as text, to look for a leaked token."""
    return "".join(p.read_text(errors="replace") for p in store_root.rglob("*")
                   if p.is_file() and "objects" not in p.parts and p.suffix != ".sqlite")


def test_push_publishes_the_exported_bytes_and_the_card_and_records_the_commit(
        store, saved, ckpt, hub, online, tmp_path):
    r = ckpt("push", "sst2/step-10", "ana/sst2")
    assert r.code == 0, r.err
    commit = hub.head("ana/sst2")
    assert r.out.strip() == f"{hub.url}/ana/sst2"
    assert f"Pushed sst2/step-10 to ana/sst2@main: commit {commit[:12]}" in r.err

    files = hub.files("ana/sst2")
    local = exported(store, "sst2/step-10", tmp_path / "export")
    assert {p: files[p] for p in local} == local  # the repository holds the exported bytes
    assert set(files) == {*local, "README.md", ".gitattributes"}
    card = ModelCard(files["README.md"].decode())
    assert card.data.to_dict()["ckptstore"]["checkpoint"] == saved.id
    assert {e.metric_name: e.metric_value for e in card.data.eval_results} == saved.metrics
    assert hub.validated == [files["README.md"].decode()]  # huggingface_hub sent it to validate-yaml first

    record = store.info("sst2/step-10").metadata["hub"]["ana/sst2@main"]
    assert (record["repo_id"], record["revision"], record["commit"]) == ("ana/sst2", "main", commit)
    shown = ckpt("show", "sst2/step-10")
    assert f"ana/sst2@main commit {commit[:12]}" in shown.out

    # The same files again: no commit, nothing recorded anew.
    commits = len(hub.commits("ana/sst2"))
    again = ckpt("push", "sst2/step-10", "ana/sst2", "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["pushed"] is False and json.loads(again.out)["commit"] == commit
    assert len(hub.commits("ana/sst2")) == commits
    assert store.info("sst2/step-10").metadata["hub"]["ana/sst2@main"]["pushed_at"] == record["pushed_at"]

    # Tokens go to huggingface_hub only: never in the store, the output, or a message.
    assert all(a == f"Bearer {TOKEN}" for a in hub.authorizations)
    for text in (r.out, r.err, shown.out, again.out, again.err, everything_stored(store.root)):
        assert TOKEN not in text


def test_push_to_a_branch_with_a_tag_replaces_what_the_branch_held_and_pull_brings_it_back(
        store, saved, tiny_bert, ckpt, hub, online, tmp_path):
    assert store.push("sst2/step-10", "ana/sst2").pushed
    other = store.save(tiny_bert(5), "other/step-1", extra_files={"notes.txt": b"only in the first push"})
    assert store.push(other.name, "ana/sst2", revision="v2").pushed  # the branch starts at main
    result = store.push("sst2/step-10", "ana/sst2", revision="v2", tag="v2.0")
    assert result.pushed and result.tags == ("v2.0",)
    assert "notes.txt" not in hub.files("ana/sst2", "v2")  # what the checkpoint does not have is removed
    assert hub.head("ana/sst2", "v2.0") == result.commit == hub.head("ana/sst2", "v2")
    assert set(store.info("sst2/step-10").metadata["hub"]) == {"ana/sst2@main", "ana/sst2@v2"}

    r = ckpt("pull", "ana/sst2@v2.0", "--json")
    assert r.code == 0, r.err
    pulled = json.loads(r.out)
    assert pulled["status"] == "added" and pulled["commit"] == result.commit and not pulled["offline"]
    assert pulled["name"] == f"ana--sst2/rev-{result.commit[:12]}"
    assert set(pulled["tags"]) == {"ana--sst2:v2", "ana--sst2:v2.0"}  # every ref at that commit
    # Dedup: the weights were already stored, only the card and .gitattributes are new.
    assert pulled["bytes_stored"] < store.info("sst2/step-10").logical_bytes / 4
    back = exported(store, pulled["name"], tmp_path / "back")
    assert back == hub.files("ana/sst2", "v2.0")
    info = store.info(pulled["name"])
    assert info.metadata["import"]["repo_id"] == "ana/sst2" and info.metadata["import"]["revision"] == result.commit
    card = ModelCard(str(store.model_card(pulled["name"])))
    assert card.data.pipeline_tag == "text-classification"
    # The pulled snapshot has no metrics of its own in the store: its card keeps those its README carried.
    assert {e.metric_name: e.metric_value for e in card.data.eval_results} == saved.metrics

    again = ckpt("pull", "ana/sst2@v2")
    assert again.code == 0 and "is already stored as" in again.err


def test_pull_reads_the_local_hub_cache_when_offline(store, saved, ckpt, hub, online, monkeypatch):
    store.push("sst2/step-10", "ana/sst2")
    # The cache, written by huggingface_hub's own download code.
    snapshot = Path(snapshot_download("ana/sst2", cache_dir=online["HF_HUB_CACHE"], endpoint=hub.url))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    seen = len(hub.requests)

    r = ckpt("pull", "ana/sst2", "--name", "sst2/from-cache", "--json")
    assert r.code == 0, r.err
    pulled = json.loads(r.out)
    assert pulled["offline"] and pulled["commit"] == snapshot.name and pulled["status"] == "added"
    assert pulled["tags"] == ["sst2:main"]
    assert len(hub.requests) == seen
    stored = {f.path: store.read_file("sst2/from-cache", f.path) for f in store.manifest("sst2/from-cache").files}
    assert stored == {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}

    missing = ckpt("pull", "ana/sst2@v9")
    assert missing.code == 1
    lines = missing.err.strip().splitlines()
    assert lines[0] == f"error: ana/sst2@v9 is not in the local hub cache ({online['HF_HUB_CACHE']}) and the Hub" \
                       " was not asked (offline). It has ana/sst2 at main."
    assert lines[1].startswith("hint: Pull it once online") and len(lines) == 2


def one_line_error(r) -> tuple[str, str]:
    lines = r.err.strip().splitlines()
    assert r.code == 1 and len(lines) == 2, r.err
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert TOKEN not in r.err and "Traceback" not in r.err
    return lines[0], lines[1]


def test_a_repository_or_revision_that_does_not_exist(store, saved, ckpt, hub, online):
    error, hint = one_line_error(ckpt("pull", "ana/nothing-here"))
    assert error == "error: Hub repository 'ana/nothing-here' does not exist (or this token may not see it)."
    assert "ORG/NAME" in hint

    store.push("sst2/step-10", "ana/sst2", tag="v1")
    error, hint = one_line_error(ckpt("pull", "ana/sst2@v9"))
    assert error == "error: Hub repository 'ana/sst2' has no revision 'v9'. It has main, v1."
    assert "ckpt pull ana/sst2@main" in hint

    usage = ckpt("pull", "not a repo id!")
    assert usage.code == 2 and usage.err.startswith("error: 'not a repo id!' is not a Hub repository id")


def test_a_push_without_a_token_is_refused_before_anything_is_sent(store, saved, ckpt, hub, online, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    error, hint = one_line_error(ckpt("push", "sst2/step-10", "ana/secret", "--private"))
    assert error == "error: No Hugging Face token to push sst2/step-10 to private repository 'ana/secret'."
    assert "hf auth login" in hint and "HF_TOKEN" in hint
    assert hub.requests == [] and hub.load("ana/secret") is None
    assert "hub" not in store.info("sst2/step-10").metadata

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token_we_know")
    error, hint = one_line_error(ckpt("push", "sst2/step-10", "ana/secret", "--private"))
    assert error.startswith("error: The Hub refused this token for 'ana/secret' (HTTP 401)")
    assert "hf_not_a_token_we_know" not in error


def test_a_push_killed_mid_upload_records_nothing_and_a_rerun_completes(store, saved, hub, online, tmp_path):
    hub.stall_uploads = True
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "ckptstore", "push", "sst2/step-10", "ana/sst2",
                             "--store", str(store.root)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert hub.upload_started.wait(120), "the push never started uploading"
        proc.send_signal(signal.SIGKILL)  # mid-upload: the server holds the weights' upload, unfinished
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    hub.stall_uploads = False
    hub.release()

    store.refresh()
    assert "hub" not in store.info("sst2/step-10").metadata  # nothing recorded as pushed
    assert set(hub.files("ana/sst2")) == {".gitattributes"}  # the repository was created; no commit of ours
    weights = hashlib.sha256(store.read_file("sst2/step-10", "model.safetensors")).hexdigest()
    assert not (hub.root / "objects" / weights).exists()  # an unfinished upload is not an object

    result = store.push("sst2/step-10", "ana/sst2")  # the rerun uploads what is missing and commits
    assert result.pushed
    local = exported(store, "sst2/step-10", tmp_path / "export")
    assert {p: hub.files("ana/sst2")[p] for p in local} == local
    assert store.info("sst2/step-10").metadata["hub"]["ana/sst2@main"]["commit"] == result.commit



def test_an_upload_the_hub_refuses_is_one_line_and_records_nothing(store, saved, ckpt, hub, online):
    hub.fail_uploads = 403
    error, hint = one_line_error(ckpt("push", "sst2/step-10", "ana/sst2"))
    assert error.startswith("error: Error while uploading 'model.safetensors' to the Hub. The Hub at")
    assert "(HTTP 403): upload refused by the test" in error
    assert "run the command again" in hint
    assert "hub" not in store.info("sst2/step-10").metadata
    assert set(hub.files("ana/sst2")) == {".gitattributes"}
    assert not [line for line in ckpt("show", "sst2/step-10").out.splitlines() if line.startswith("hub ")]
