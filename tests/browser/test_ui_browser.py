"""`ckpt ui` in a real headless Chromium: every page loads clean, the run chart draws what the store holds, links
open checkpoints, the diff names the changed layer, script canaries stay text, and changes need --allow-write and a
confirmation."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from uistore import CANARIES, CANARY_MESSAGE, CANARY_METRIC, build_ui_store, copy_store

PAGES = {
    "runs": "/",
    "run": "/runs/sst2",
    "checkpoint": "/c/sst2/step-200",
    "diff": "/diff?a=sst2/step-200&b=sst2/step-600",
    "store": "/store",
}


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ui-browser") / "store"
    return path, build_ui_store(path)


@pytest.fixture
def store_copy(template_store, tmp_path):
    path, facts = template_store
    return copy_store(path, tmp_path / "store"), facts


def _settled(page) -> None:
    page.wait_for_load_state("networkidle")


def test_each_page_loads_with_no_console_error(page, ui_server, store_copy, screenshots):
    path, _ = store_copy
    server = ui_server(path)
    for name, url in PAGES.items():
        response = page.goto(server.url + url)
        assert response.status == 200, url
        _settled(page)
        if name == "run":
            page.wait_for_selector("#metric-chart[data-points]")
        if name == "diff":
            page.wait_for_selector("#layer-chart")
        if name == "store":
            page.wait_for_function("document.getElementById('gc-estimate').textContent !== '…'")
        page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
        assert page.errors == [], (url, page.errors)


def test_run_chart_has_one_point_per_checkpoint_with_best_marked(page, ui_server, store_copy):
    path, facts = store_copy
    server = ui_server(path)
    page.goto(server.url + "/runs/sst2")
    chart = page.wait_for_selector("#metric-chart[data-points]")
    assert chart.get_attribute("data-points") == str(len(facts["kept"]))
    assert chart.get_attribute("data-best-step") == "200"
    assert chart.get_attribute("data-pruned") == str(len(facts["pruned"]))
    assert page.locator("#metric-chart canvas").count() >= 1
    rows = page.locator("#checkpoints-table tbody tr")
    assert rows.count() == len(facts["kept"]) + len(facts["pruned"])
    assert page.locator("#checkpoints-table tr.best").get_attribute("data-name") == facts["best"]
    assert page.locator("#checkpoints-table tr.pruned").count() == len(facts["pruned"])
    # Another metric: the same checkpoints; the best is still the run's best (by eval_loss), wherever it falls.
    page.select_option("#metric-select", "eval_accuracy")
    chart = page.wait_for_selector("#metric-chart[data-points]")
    assert chart.get_attribute("data-points") == str(len(facts["kept"]))
    assert page.locator("#storage-chart").get_attribute("data-points") == str(len(facts["kept"]))
    assert page.errors == []


def test_checkpoint_table_sorts_by_a_column(page, ui_server, store_copy):
    path, facts = store_copy
    server = ui_server(path)
    page.goto(server.url + "/runs/sst2")
    names = lambda: page.locator("#checkpoints-table tbody tr:not(.pruned)").evaluate_all(  # noqa: E731
        "rows => rows.map(r => r.dataset.name)")
    assert names() == facts["kept"]
    page.click("#checkpoints-table th:has-text('eval_loss')")
    by_loss = names()
    assert by_loss[0] == facts["best"]
    page.click("#checkpoints-table th:has-text('eval_loss')")
    assert names() == list(reversed(by_loss))


def test_clicking_a_checkpoint_opens_it(page, ui_server, store_copy):
    path, _ = store_copy
    server = ui_server(path)
    page.goto(server.url + "/")
    page.click("text=sst2")
    page.wait_for_url("**/runs/sst2")
    page.click("a.ckpt-link:text-is('sst2/step-300')")
    page.wait_for_url("**/c/sst2/step-300")
    assert page.locator("#ckpt-name").inner_text() == "sst2/step-300"
    assert "v1" in page.locator(".tag-user").all_inner_texts()
    assert "ckpt export sst2/step-300 ./step-300" in page.locator("#commands").inner_text()
    page.click("summary:has-text('classifier')")
    assert page.locator("details.module[open] td:text-is('classifier.weight')").count() == 1
    assert page.errors == []


def test_diff_page_names_the_changed_layer(page, ui_server, store_copy):
    path, _ = store_copy
    server = ui_server(path)
    page.goto(server.url + "/runs/sst2")
    page.check("input.pick[value='sst2/step-200']")
    page.check("input.pick[value='sst2/step-600']")
    page.click("#diff-selected")
    page.wait_for_url("**/diff?a=sst2%2Fstep-200&b=sst2%2Fstep-600")
    page.wait_for_selector("#layer-chart")
    layers = page.locator("#layer-chart .bar-row").evaluate_all("rows => rows.map(r => r.dataset.layer)")
    assert layers == ["classifier"]
    assert "classifier" in page.locator("#layer-chart").inner_text()
    assert "model.safetensors" in page.locator("#diff-result").inner_text()
    assert page.errors == []


def test_script_canary_shows_as_text_and_never_runs(page, ui_server, store_copy, screenshots):
    path, _ = store_copy
    server = ui_server(path)
    for url in ("/c/canary/step-1", "/runs/canary", "/", "/diff?a=canary/step-1&b=other/step-7"):
        page.goto(server.url + url)
        _settled(page)
        assert page.evaluate("window.__pwned") is None, url
        # Nothing the canaries carry became an element: the only scripts are the page's own three.
        assert page.locator("img[src='x'], svg[onload], b[onmouseover]").count() == 0, url
        assert page.locator("script").count() == 3, url
    page.goto(server.url + "/c/canary/step-1")
    assert page.locator("#message").inner_text() == CANARY_MESSAGE
    metadata = page.locator("#metadata").inner_text()
    assert CANARIES[1] in metadata and CANARIES[3] in metadata
    assert CANARIES[2] in metadata  # inside the nested value, shown as JSON text
    page.screenshot(path=str(screenshots / "canary.png"), full_page=True)
    page.goto(server.url + "/runs/canary")
    assert CANARY_METRIC in page.locator("#metric-select").inner_text()
    page.select_option("#metric-select", CANARY_METRIC)
    page.hover("#checkpoints-table")
    assert page.evaluate("window.__pwned") is None
    assert page.errors == []


def _post(url: str, action: str, body: dict, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/api/write/{action}", data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", "x-csrf-token": token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_write_actions_refused_without_allow_write(page, ui_server, store_copy):
    path, _ = store_copy
    server = ui_server(path)
    page.goto(server.url + "/c/sst2/step-300")
    assert page.locator("button.write").count() == 0
    assert page.locator(".mode").inner_text() == "read-only"
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    # Even with the page's own token, from the page itself: refused.
    status = page.evaluate("""async (token) => (await fetch('/api/write/delete', {method: 'POST',
        headers: {'content-type': 'application/json', 'x-csrf-token': token},
        body: JSON.stringify({refs: ['sst2/step-300'], confirm: true})})).status""", token)
    assert status == 403
    assert _post(server.url, "untag", {"tag": "sst2:v1"}, token)[0] == 403
    page.goto(server.url + "/c/sst2/step-300")
    assert page.locator("#ckpt-name").inner_text() == "sst2/step-300"  # still there
    assert "v1" in page.locator(".tag-user").all_inner_texts()


def test_write_actions_with_allow_write_show_the_plan_then_act(page, ui_server, store_copy):
    path, _ = store_copy
    server = ui_server(path, "--allow-write")
    page.goto(server.url + "/c/sst2/step-300")
    assert page.locator(".mode").inner_text() == "writes allowed"
    # Tag: the plan first, and nothing changes until confirmed.
    page.fill("#tag-name", "prod")
    page.click("button.write[data-action='tag']")
    page.wait_for_selector("#dialog-confirm:visible")
    assert "Point sst2:prod at sst2/step-300" in page.locator("#dialog-summary").inner_text()
    page.click("#dialog-cancel")
    page.goto(server.url + "/c/sst2/step-300")
    assert "prod" not in page.locator("body").inner_text().split("Metrics")[0]
    page.fill("#tag-name", "prod")
    page.click("button.write[data-action='tag']")
    page.wait_for_selector("#dialog-confirm:visible")
    page.click("#dialog-confirm")
    page.wait_for_selector("#dialog-result.ok")
    page.click("#dialog-cancel")  # Close: reloads
    page.wait_for_selector(".tag-user:text-is('prod')")
    # Delete from the run page: select, plan, confirm.
    page.goto(server.url + "/runs/sst2")
    page.check("input.pick[value='sst2/step-300']")
    page.click("#delete-selected")
    page.wait_for_selector("#dialog-confirm:visible")
    assert "Delete 1 checkpoint(s): sst2/step-300; tags removed: sst2:prod, sst2:v1" in page.locator("#dialog-summary").inner_text()
    assert "sst2/step-300" in page.locator("#dialog-detail").inner_text()
    page.click("#dialog-confirm")
    page.wait_for_selector("#dialog-result.ok")
    page.click("#dialog-cancel")
    page.wait_for_load_state("load")
    page.wait_for_selector("#checkpoints-table tr.pruned[data-name='sst2/step-300']")
    # Prune with a rule typed in: the plan names what goes.
    page.fill("#prune-keep-last", "1")
    page.click("button.write[data-action='prune']")
    page.wait_for_selector("#dialog-confirm:visible")
    assert "remove 1 checkpoint(s) (sst2/step-500)" in page.locator("#dialog-summary").inner_text()
    page.click("#dialog-confirm")
    page.wait_for_selector("#dialog-result.ok")
    assert page.errors == []
    from ckptstore import Store

    with Store.open(path) as store:
        assert [c.name for c in store.log("sst2")] == ["sst2/step-200", "sst2/step-600"]
        assert "sst2:prod" not in store.tags()  # it went with step-300
