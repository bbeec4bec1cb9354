"""The web view's JSON API and pages through Starlette's test client, on a real store of tiny BERT checkpoints."""

from __future__ import annotations

import html
import json
import re

import pytest

from uistore import CANARIES, CANARY_MESSAGE, CANARY_METRIC, build_ui_store, copy_store

pytest.importorskip("starlette")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ui-template") / "store"
    facts = build_ui_store(path)
    return path, facts


@pytest.fixture
def ui(template_store, tmp_path):
    """(store, facts, client factory): a fresh copy of the template store for each test, since some change it."""
    from starlette.testclient import TestClient

    from ckptstore import Store
    from ckptstore.ui import create_app

    path, facts = template_store
    store = Store.open(copy_store(path, tmp_path / "store"))

    def client(**kwargs) -> TestClient:
        return TestClient(create_app(store, **kwargs))

    yield store, facts, client
    store.close()


def _page_data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.S)
    assert m, "no page data block"
    return json.loads(m.group(1))


def test_runs_lists_every_run_with_counts_best_policy_and_bytes(ui):
    store, facts, client = ui
    runs = {r["run"]: r for r in client().get("/api/runs").json()["runs"]}
    assert set(runs) == {"sst2", "canary", "other"}
    sst2 = runs["sst2"]
    assert sst2["checkpoints"] == len(facts["kept"]) and sst2["latest_step"] == 600
    assert sst2["best"]["name"] == facts["best"] and sst2["best"]["metric"] == "eval_loss"
    assert sst2["best"]["value"] == pytest.approx(0.5)
    assert sst2["policy"] == str(store.get_policy("sst2")) and "last 2" in sst2["policy"]
    assert runs["other"]["policy"].startswith("none")
    assert sst2["logical_bytes"] == sum(c.logical_bytes for c in store.list("sst2"))
    # The five classifier heads differ, the body is shared: stored is well under the plain folders.
    assert 0 < sst2["stored_bytes"] < sst2["logical_bytes"] / 2
    # other/step-7 has exactly canary/step-1's weights: nothing is only in it but its manifest-level files.
    assert runs["other"]["unique_bytes"] < runs["other"]["stored_bytes"]


def test_run_marks_best_latest_tagged_and_pruned(ui):
    store, facts, client = ui
    run = client().get("/api/runs/sst2").json()
    names = [c["name"] for c in run["checkpoints"]]
    assert names == facts["kept"]  # step order
    flags = {c["name"]: (c["best"], c["latest"], c["user_tags"]) for c in run["checkpoints"]}
    assert flags[facts["best"]] == (True, False, [])
    assert flags[facts["latest"]] == (False, True, [])
    assert flags["sst2/step-300"][2] == ["v1"]
    assert [p["name"] for p in run["pruned"]] == facts["pruned"] and [p["step"] for p in run["pruned"]] == [100, 400]
    assert run["metrics"] == ["eval_loss", "eval_accuracy"] and run["best_metric"] == "eval_loss"


def test_run_storage_over_time_adds_up(ui):
    store, _, client = ui
    run = client().get("/api/runs/sst2").json()
    growth = run["storage"]
    assert len(growth) == len(run["checkpoints"])
    assert [g["created_at"] for g in growth] == sorted(g["created_at"] for g in growth)
    assert growth[-1]["folders_bytes"] == sum(c.logical_bytes for c in store.list("sst2"))
    new = [c["new_bytes"] for c in sorted(run["checkpoints"], key=lambda c: c["created_at"])]
    assert growth[-1]["stored_bytes"] == sum(new) == store.run_stored_bytes()["sst2"]
    assert [g["stored_bytes"] for g in growth] == [sum(new[: i + 1]) for i in range(len(new))]
    # The first kept checkpoint brings the whole model; each later one only its new head (and small files).
    assert new[0] > 10 * max(new[1:])


def test_checkpoint_groups_tensors_by_module_and_shows_lineage(ui):
    store, _, client = ui
    d = client().get("/api/checkpoints/sst2:best").json()
    assert d["name"] == "sst2/step-200" and d["message"] == "step 200"
    described = store.describe("sst2/step-200")
    assert sum(len(m["tensors"]) for m in d["modules"]) == len(described["tensors"])
    modules = {m["module"]: m for m in d["modules"]}
    assert "classifier" in modules and {t["name"] for t in modules["classifier"]["tensors"]} == {
        "classifier.weight", "classifier.bias"}
    assert sum(m["parameters"] for m in d["modules"]) == described["parameters"]
    assert d["config"]["hidden_size"] == 32 and d["config"]["num_hidden_layers"] == 2
    assert d["commands"]["export"] == "ckpt export sst2/step-200 ./step-200"
    assert {f["path"] for f in d["files"]} >= {"config.json", "model.safetensors"}
    assert d["validation"] is None
    # Lineage: a live model's saves carry no parent here; children are the checkpoints whose parent it is.
    assert d["children"] == [] and d["lineage_chain"][0]["name"] == "sst2/step-200"


def test_checkpoint_children_and_parents(ui):
    store, _, client = ui
    with store.materialized("other/step-7") as folder:
        child = store.save(folder, "other/step-8", parent="other/step-7", metrics={"eval_loss": 0.6})
    parent = client().get("/api/checkpoints/other/step-7").json()
    assert [c["name"] for c in parent["children"]] == [child.name]
    kid = client().get(f"/api/checkpoints/{child.name}").json()
    assert [a["name"] for a in kid["lineage_chain"]] == ["other/step-8", "other/step-7"]
    page = client().get("/c/other/step-8").text
    assert 'href="/c/other/step-7"' in page and "Diff with its parent" in page


def test_diff_names_the_changed_layer(ui):
    _, _, client = ui
    d = client().get("/api/diff", params={"a": "sst2/step-200", "b": "sst2/step-600"}).json()
    assert [layer["layer"] for layer in d["layers"]] == ["classifier"]
    assert d["layers"][0]["rel_change"] == pytest.approx(1.1 ** 4 - 1, rel=1e-4)  # steps 300, 400, 500, 600
    assert {t["name"] for t in d["tensors"]["changed"]} == {"classifier.weight"}
    assert d["tensors"]["unchanged"] > 30 and d["tensors"]["read"] == 1
    assert d["config"] == [] and [f["path"] for f in d["files"]] == ["model.safetensors"]


def test_diff_needs_two_known_checkpoints(ui):
    _, _, client = ui
    c = client()
    assert c.get("/api/diff", params={"a": "sst2/step-200"}).status_code == 400
    missing = c.get("/api/diff", params={"a": "sst2/step-200", "b": "sst2/step-20"})
    assert missing.status_code == 404 and "sst2/step-200" in missing.json()["error"] + missing.json()["hint"]


def test_store_usage_dedup_and_gc_estimate(ui):
    store, _, client = ui
    c = client()
    s = c.get("/api/store").json()
    du = store.du()
    assert (s["logical_bytes"], s["stored_bytes"], s["saved_bytes"]) == (du.logical_bytes, du.stored_bytes,
                                                                        du.saved_bytes)
    assert s["saved_bytes"] > 0 and s["compression"] == "none" and s["last_verify"] is None
    assert {r["run"] for r in s["runs"]} == {"sst2", "canary", "other"}
    # The pruned checkpoints' heads are unreferenced until gc: the estimate is what gc then frees.
    gc = c.get("/api/store/gc").json()
    expected = store.gc(dry_run=True).bytes_freed
    assert gc["bytes_freed"] == expected > 0 and gc["executed"] is False
    store.gc()
    assert c.get("/api/store/gc").json()["bytes_freed"] == 0


def test_pages_render_and_unknown_ones_are_404(ui):
    _, _, client = ui
    c = client()
    for url in ("/", "/runs/sst2", "/c/sst2/step-200", "/c/sst2:latest", "/diff?a=sst2/step-200&b=sst2:latest",
                "/store", "/static/vendor/uPlot.iife.min.js", "/static/app.js"):
        r = c.get(url)
        assert r.status_code == 200, url
    assert c.get("/runs/sst3").status_code == 404
    assert "sst2" in c.get("/runs/sst3").text  # did you mean
    assert c.get("/c/sst2/step-999").status_code == 404
    assert c.get("/api/runs/nope").status_code == 404


def test_user_data_is_escaped_in_pages_and_json(ui):
    _, _, client = ui
    c = client()
    for url in ("/c/canary/step-1", "/runs/canary", "/"):
        text = c.get(url).text
        for canary in (*CANARIES, CANARY_METRIC):
            assert canary not in text, (url, canary)
        assert isinstance(_page_data(text), dict)  # the JSON block parses (its strings are checked below)
        assert "</script" not in text.split('id="page-data">', 1)[1].split("</script>", 1)[0]
    page = c.get("/c/canary/step-1").text
    assert html.escape(CANARIES[0], quote=False) in page or html.escape(CANARIES[0]) in page
    assert _page_data(page)["message"] == CANARY_MESSAGE
    run = _page_data(c.get("/runs/canary").text)
    assert CANARY_METRIC in run["metrics"]
    assert "<th>{{ 7 * 7 }}" in html.unescape(page) and "<th>49" not in html.unescape(page)  # never evaluated


def test_security_headers_and_host_check(ui):
    store, _, client = ui
    r = client().get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    from starlette.testclient import TestClient

    from ckptstore.ui import create_app

    guarded = TestClient(create_app(store, allowed_hosts=["127.0.0.1"]), base_url="http://127.0.0.1")
    assert guarded.get("/api/runs").status_code == 200
    assert guarded.get("/api/runs", headers={"host": "evil.example"}).status_code == 400


def test_writes_are_refused_without_allow_write(ui):
    store, _, client = ui
    c = client(csrf_token="t" * 32)
    before = store.tags()
    for action, body in (("tag", {"ref": "sst2/step-500", "tag": "prod"}), ("untag", {"tag": "sst2:v1"}),
                         ("delete", {"refs": ["sst2/step-500"]}), ("prune", {"run": "sst2", "keep_last": 1})):
        for confirm in (False, True):
            r = c.post(f"/api/write/{action}", json={**body, "confirm": confirm}, headers={"x-csrf-token": "t" * 32})
            assert r.status_code == 403 and "--allow-write" in r.json()["hint"]
    store.refresh()
    assert store.tags() == before and store.has("sst2/step-500")
    assert "writes allowed" not in c.get("/runs/sst2").text and 'class="write"' not in c.get("/runs/sst2").text


def test_writes_need_the_csrf_token(ui):
    store, _, client = ui
    c = client(allow_write=True, csrf_token="right-token")
    body = {"ref": "sst2/step-500", "tag": "prod"}
    assert c.post("/api/write/tag", json=body).status_code == 403
    assert c.post("/api/write/tag", json=body, headers={"x-csrf-token": "wrong"}).status_code == 403
    page = c.get("/runs/sst2").text
    assert '<meta name="csrf-token" content="right-token">' in page
    assert c.post("/api/write/tag", json=body, headers={"x-csrf-token": "right-token"}).status_code == 200


def _writer(client):
    c = client(allow_write=True, csrf_token="tok")

    def post(action, body):
        return c.post(f"/api/write/{action}", json=body, headers={"x-csrf-token": "tok"})

    return post


def test_tag_and_untag_plan_then_act(ui):
    store, _, client = ui
    post = _writer(client)
    plan = post("tag", {"ref": "sst2/step-500", "tag": "v1"}).json()
    assert "sst2:v1" in plan["summary"] and "sst2/step-300" in plan["summary"]  # it moves
    store.refresh()
    assert store.tags("sst2")["sst2:v1"] == store.resolve("sst2/step-300")  # a plan changes nothing
    done = post("tag", {"ref": "sst2/step-500", "tag": "v1", "confirm": True, "expect": plan["expect"]})
    assert done.status_code == 200, done.json()
    store.refresh()
    assert store.tags("sst2")["sst2:v1"] == store.resolve("sst2/step-500")
    plan = post("untag", {"tag": "sst2:v1"}).json()
    assert post("untag", {"tag": "sst2:v1", "confirm": True, "expect": plan["expect"]}).status_code == 200
    store.refresh()
    assert "sst2:v1" not in store.tags()
    assert post("untag", {"tag": "sst2:v1"}).status_code == 404
    assert post("untag", {"tag": "sst2:latest"}).status_code == 400  # the store's own tags


def test_delete_plan_then_act_and_a_changed_plan_is_refused(ui):
    store, _, client = ui
    post = _writer(client)
    plan = post("delete", {"refs": ["sst2/step-500"]}).json()
    assert plan["plan"]["checkpoints"] == ["sst2/step-500"] and "gc can then free" in plan["summary"]
    assert store.has("sst2/step-500")
    stale = post("delete", {"refs": ["sst2/step-500"], "confirm": True, "expect": ["0" * 64]})
    assert stale.status_code == 409 and store.has("sst2/step-500")
    assert post("delete", {"refs": ["sst2/step-500"], "confirm": True, "expect": plan["expect"]}).status_code == 200
    store.refresh()
    assert not store.has("sst2/step-500")
    assert post("delete", {"refs": "sst2/step-600"}).status_code == 400


def test_prune_plan_then_act(ui):
    store, _, client = ui
    post = _writer(client)
    plan = post("prune", {"run": "sst2", "keep_last": 1}).json()
    removed = [d["name"] for d in plan["plan"]["remove"]]
    assert removed == ["sst2/step-500"]  # 200 best, 300 tagged, 600 latest stay
    assert post("prune", {"run": "sst2", "keep_last": 1, "confirm": True, "expect": plan["expect"]}).status_code == 200
    store.refresh()
    assert [c.name for c in store.log("sst2")] == ["sst2/step-200", "sst2/step-300", "sst2/step-600"]
    assert post("prune", {"run": "other"}).json()["type"] == "PolicyError"  # no policy, none given
    assert post("prune", {"run": "sst2", "keep_last": "many"}).status_code == 400
    assert post("nope", {}).status_code == 404


def test_byte_totals_follow_saves_and_deletes(ui):
    store, _, client = ui
    c = client()
    before = c.get("/api/store").json()
    assert before["checkpoints"] == store.du().checkpoints
    store.delete(["sst2/step-500"])
    after = c.get("/api/store").json()
    du = store.du()
    assert (after["checkpoints"], after["logical_bytes"], after["stored_bytes"]) == (
        before["checkpoints"] - 1, du.logical_bytes, du.stored_bytes)
    runs = {r["run"]: r for r in c.get("/api/runs").json()["runs"]}
    assert runs["sst2"]["stored_bytes"] == store.run_stored_bytes()["sst2"] < before["runs"][2]["stored_bytes"]
