// The web view's one script: sortable tables, charts (uPlot), the diff page, and plan-then-confirm changes.
// User data (names, messages, metadata) only ever reaches the page as text (textContent) or as chart values,
// never as markup: the page data arrives as JSON in a script block of type application/json, the rest from /api/.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "href") node.setAttribute("href", v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[i]}`;
  }

  function when(ts) {
    if (ts === null || ts === undefined) return "";
    const d = new Date(ts * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function metric(v) {
    return typeof v === "number" ? String(Number(v.toPrecision(4))) : v === undefined || v === null ? "" : String(v);
  }

  function ckptHref(name) {
    return "/c/" + name.split("/").map(encodeURIComponent).join("/");
  }

  // -- sortable tables ------------------------------------------------------------------------------------------
  function sortTable(table, col, type, descending) {
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const key = (row) => {
      const cell = row.cells[col];
      const raw = cell ? (cell.dataset.sort ?? cell.textContent) : "";
      if (type === "num") return raw === "" ? null : Number(raw);
      return raw.toLowerCase();
    };
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;  // empty cells last, either way
      const c = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -c : c;
    });
    body.append(...rows);
  }

  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, col) => {
      if (!th.dataset.type) return;
      th.classList.add("sort-key");
      th.title = "sort";
      th.addEventListener("click", () => {
        const descending = th.dataset.dir === "asc";
        for (const other of table.tHead.rows[0].cells) delete other.dataset.dir;
        th.dataset.dir = descending ? "desc" : "asc";
        sortTable(table, col, th.dataset.type, descending);
      });
    });
  }

  // -- charts ---------------------------------------------------------------------------------------------------
  function chartWidth(node) {
    return Math.max(320, node.clientWidth || 800);
  }

  function metricChart(run, metric) {
    const node = document.getElementById("metric-chart");
    if (!node) return;
    node.textContent = "";
    const points = run.checkpoints.filter((c) => c.step !== null && c.step !== undefined);
    const xs = points.map((c) => c.step);
    const value = (c) => (typeof c.metrics[metric] === "number" ? c.metrics[metric] : null);
    const ys = points.map(value);
    const only = (pred) => points.map((c) => (pred(c) ? value(c) : null));
    const best = only((c) => c.best);
    const latest = only((c) => c.latest);
    const tagged = only((c) => c.user_tags.length > 0);
    const pruned = run.pruned.filter((p) => p.step !== null && p.step !== undefined).map((p) => p.step);
    const markOnly = (label, color, size, fill) => ({
      label, stroke: color, fill: fill, width: 2, paths: () => null,
      points: { show: true, size: size, stroke: color, fill: fill, width: 2 },
    });
    const opts = {
      width: chartWidth(node), height: 300,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: metric, size: 70 }],
      cursor: { points: { size: 8 } },
      series: [
        { label: "step" },
        { label: metric + " (kept)", stroke: "#3366cc", width: 1.5, spanGaps: true,
          points: { show: true, size: 5, fill: "#3366cc" } },
        markOnly("best", "#d4a000", 16, "#ffd23f"),
        markOnly("latest", "#2a9d8f", 11, "#2a9d8f"),
        markOnly("tagged", "#c0392b", 13, "transparent"),
      ],
      hooks: {
        draw: [(u) => {
          // Pruned checkpoints: gone from the store, so no value to plot; a dashed line marks where they were.
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#999";
          ctx.setLineDash([4, 4]);
          for (const step of pruned) {
            const x = Math.round(u.valToPos(step, "x", true));
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        }],
      },
    };
    const plot = new uPlot(opts, [xs, ys, best, latest, tagged], node);
    // What was drawn, for readers of the page and for the browser tests.
    node.dataset.points = String(plot.data[1].filter((v) => v !== null).length);
    node.dataset.checkpoints = String(plot.data[0].length);
    const bestIdx = plot.data[2].findIndex((v) => v !== null);
    node.dataset.bestStep = bestIdx >= 0 ? String(plot.data[0][bestIdx]) : "";
    node.dataset.pruned = String(pruned.length);
    node.dataset.drawnAt = performance.now().toFixed(1);  // ms since navigation began (bench/bench_ui.py)
    plot.over.addEventListener("click", () => {
      const idx = plot.cursor.idx;
      if (idx !== null && idx !== undefined && points[idx]) window.location.href = ckptHref(points[idx].name);
    });
    plot.over.style.cursor = "pointer";
  }

  function storageChart(run) {
    const node = document.getElementById("storage-chart");
    if (!node || !run.storage.length) return;
    const s = run.storage;
    const opts = {
      width: chartWidth(node), height: 240,
      axes: [{}, { values: (u, vals) => vals.map(bytes), size: 80 }],
      series: [
        {},
        { label: "plain folders", stroke: "#999", width: 2, value: (u, v) => bytes(v) },
        { label: "stored", stroke: "#3366cc", width: 2, fill: "rgba(51,102,204,0.12)", value: (u, v) => bytes(v) },
      ],
    };
    new uPlot(opts, [s.map((g) => g.created_at), s.map((g) => g.folders_bytes), s.map((g) => g.stored_bytes)], node);
    node.dataset.points = String(s.length);
  }

  function cell(text, sort, cls) {
    const td = el("td", cls ? { class: cls } : {}, text);
    td.dataset.sort = sort === null || sort === undefined ? "" : String(sort);
    return td;
  }

  // The checkpoint table is built here from the page data (a run can hold thousands of checkpoints: the server
  // sends them once, as JSON, instead of as both JSON and HTML).
  function checkpointRows(run) {
    const body = document.getElementById("checkpoint-rows");
    const rows = [];
    for (const c of run.checkpoints) {
      const tr = el("tr", { class: [c.best ? "best" : "", c.latest ? "latest" : ""].join(" ").trim() });
      tr.dataset.name = c.name;
      const pick = el("input", { type: "checkbox", class: "pick", "aria-label": `select ${c.name}` });
      pick.value = c.name;
      const tags = el("td");
      tags.dataset.sort = c.tags.join(" ");
      for (const t of c.tags) tags.append(el("span", { class: `tag tag-${t === "best" || t === "latest" ? t : "user"}` }, t));
      tr.append(el("td", {}, pick), cell(c.step ?? "", c.step, "num"),
        cell(el("a", { class: "ckpt-link", href: ckptHref(c.name) }, c.name), c.name),
        cell(when(c.created_at), c.created_at, "num"),
        ...run.metrics.map((m) => cell(metric(c.metrics[m]), typeof c.metrics[m] === "number" ? c.metrics[m] : null, "num")),
        tags, cell(bytes(c.logical_bytes), c.logical_bytes, "num"), cell(bytes(c.new_bytes), c.new_bytes, "num"));
      rows.push(tr);
    }
    for (const p of run.pruned) {
      const tr = el("tr", { class: "pruned" });
      tr.dataset.name = p.name;
      tr.append(el("td"), cell(p.step ?? "", p.step, "num"),
        cell(el("span", {}, el("s", {}, p.name), " ", el("span", { class: "muted" }, "pruned")), p.name),
        cell("", null, "num"), ...run.metrics.map(() => cell("", null, "num")), cell("", null),
        cell("gone", null, "num"), cell("", null, "num"));
      rows.push(tr);
    }
    body.append(...rows);
  }

  function runPage() {
    checkpointRows(data);
    const select = document.getElementById("metric-select");
    if (select) {
      metricChart(data, select.value);
      select.addEventListener("change", () => metricChart(data, select.value));
    }
    storageChart(data);
    const picks = () => Array.from(document.querySelectorAll("input.pick:checked")).map((b) => b.value);
    const diffButton = document.getElementById("diff-selected");
    const deleteButton = document.getElementById("delete-selected");
    document.getElementById("checkpoints-table").addEventListener("change", () => {
      const chosen = picks();
      diffButton.disabled = chosen.length !== 2;
      if (deleteButton) deleteButton.disabled = chosen.length === 0;
    });
    diffButton.addEventListener("click", () => {
      const [a, b] = picks();
      window.location.href = `/diff?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`;
    });
    return picks;
  }

  // -- diff -----------------------------------------------------------------------------------------------------
  function table(headers, rows) {
    return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c ?? ""))))));
  }

  async function diffPage() {
    if (!data.a || !data.b) return;
    const out = document.getElementById("diff-result");
    out.textContent = "Comparing…";
    const resp = await fetch(`/api/diff?a=${encodeURIComponent(data.a)}&b=${encodeURIComponent(data.b)}`);
    const d = await resp.json();
    out.textContent = "";
    if (!resp.ok) {
      out.append(el("p", { class: "error" }, d.error), el("p", { class: "hint" }, d.hint || ""));
      return;
    }
    const t = d.tensors;
    out.append(el("p", {},
      "From ", el("a", { href: ckptHref(d.a.name) }, d.a.name), " to ", el("a", { href: ckptHref(d.b.name) }, d.b.name),
      `: ${t.changed.length} tensors changed, ${t.added.length} added, ${t.removed.length} removed, ` +
      `${t.reshaped.length} reshaped, ${t.unchanged} unchanged (not read); ${d.config.length} config keys and ` +
      `${d.files.length} files changed.`));
    out.append(el("h2", {}, "Relative change per layer (‖b − a‖ / ‖a‖, largest tensor of the layer)"));
    const chart = el("div", { class: "bars", id: "layer-chart" });
    const finite = d.layers.map((l) => (typeof l.rel_change === "number" ? l.rel_change : 0));
    const top = Math.max(1e-12, ...finite);
    for (const l of d.layers) {
      const v = typeof l.rel_change === "number" ? l.rel_change : Infinity;
      const bar = el("div", { class: "bar" });
      bar.style.width = `${Math.max(0.5, Math.min(100, (100 * (isFinite(v) ? v : top)) / top))}%`;
      chart.append(el("div", { class: "bar-row", "data-layer": l.layer },
        el("span", { class: "bar-label" }, l.layer), el("span", { class: "bar-track" }, bar),
        el("span", { class: "bar-value" }, isFinite(v) ? v.toPrecision(3) : String(l.rel_change))));
    }
    if (!d.layers.length) chart.append(el("p", { class: "empty" }, "No layer changed."));
    out.append(chart);
    out.append(el("h2", {}, "Tensors changed"));
    out.append(table(["tensor", "relative change", "max |b − a|", "dtype", "shape"],
      t.changed.map((c) => [c.name, String(c.rel_l2), String(c.max_abs), c.new_dtype, `[${c.new_shape.join(", ")}]`])));
    const other = [...t.added, ...t.removed, ...t.reshaped];
    if (other.length) {
      out.append(el("h2", {}, "Tensors added, removed, reshaped"));
      out.append(table(["tensor", "change", "old shape", "new shape"], other.map((c) => [c.name, c.change,
        c.old_shape ? `[${c.old_shape.join(", ")}]` : "", c.new_shape ? `[${c.new_shape.join(", ")}]` : ""])));
    }
    out.append(el("h2", {}, "Config changes"));
    out.append(d.config.length ? table(["key", "change", "old", "new"], d.config.map((c) => [c.key, c.change,
      JSON.stringify(c.old), JSON.stringify(c.new)])) : el("p", { class: "empty" }, "none"));
    out.append(el("h2", {}, "File changes"));
    out.append(d.files.length ? table(["file", "change", "old size", "new size"], d.files.map((f) => [f.path, f.change,
      bytes(f.old_size), bytes(f.new_size)])) : el("p", { class: "empty" }, `none (${d.files_unchanged} files identical)`));
  }

  // -- store ----------------------------------------------------------------------------------------------------
  async function storePage() {
    const node = document.getElementById("gc-estimate");
    const resp = await fetch("/api/store/gc");
    const g = await resp.json();
    node.textContent = g.error ? "unknown" : g.bytes_freed_str;
    node.title = g.error ? g.error : `${g.blobs_removed} unreferenced blobs, ${g.tmp_files_removed} leftover files`;
    const packed = document.getElementById("packing-saved");
    const p = await (await fetch("/api/store/packing")).json();
    packed.textContent = p.error ? "unknown" : p.saved_str;
    packed.title = p.error ? p.error : `zstd ${p.zstd_saved_str}, deltas ${p.delta_saved_str}`;
  }

  // -- changes: plan, then confirm ------------------------------------------------------------------------------
  async function post(action, body) {
    const resp = await fetch(`/api/write/${action}`, {
      method: "POST", headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
    });
    return [resp, await resp.json()];
  }

  function openDialog(title) {
    const dialog = document.getElementById("dialog");
    document.getElementById("dialog-title").textContent = title;
    for (const id of ["dialog-summary", "dialog-detail", "dialog-result"]) document.getElementById(id).textContent = "";
    document.getElementById("dialog-confirm").hidden = true;
    dialog.hidden = false;
    return dialog;
  }

  function bodyFor(button, picks) {
    const action = button.dataset.action;
    if (action === "tag") return { ref: button.dataset.ref, tag: document.getElementById("tag-name").value.trim() };
    if (action === "untag") return { tag: button.dataset.tag };
    if (action === "delete") return { refs: button.dataset.refs ? [button.dataset.refs] : picks() };
    const keep = document.getElementById("prune-keep-last").value.trim();
    return { run: button.dataset.run, keep_last: keep === "" ? null : Number(keep) };
  }

  function writes(picks) {
    const confirm = document.getElementById("dialog-confirm");
    const cancel = document.getElementById("dialog-cancel");
    let pending = null;
    let changed = false;
    cancel.addEventListener("click", () => {
      document.getElementById("dialog").hidden = true;
      pending = null;
      if (changed) window.location.reload();
    });
    confirm.addEventListener("click", async () => {
      if (!pending) return;
      const [action, body] = pending;
      pending = null;
      confirm.hidden = true;
      const [resp, r] = await post(action, body);
      const result = document.getElementById("dialog-result");
      result.textContent = resp.ok ? r.done : `${r.error} ${r.hint || r.summary || ""}`;
      result.className = resp.ok ? "result ok" : "result error";
      changed = changed || resp.ok;
      cancel.textContent = "Close";
    });
    for (const button of document.querySelectorAll("button.write")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.action;
        const body = bodyFor(button, picks);
        openDialog(`${action}: plan`);
        cancel.textContent = "Cancel";
        const [resp, plan] = await post(action, body);
        const summary = document.getElementById("dialog-summary");
        if (!resp.ok) {
          summary.textContent = `${plan.error} ${plan.hint || ""}`;
          summary.className = "error";
          return;
        }
        summary.className = "";
        summary.textContent = plan.summary;
        if (plan.plan) document.getElementById("dialog-detail").textContent = JSON.stringify(plan.plan, null, 2);
        pending = [action, { ...body, confirm: true, expect: plan.expect }];
        confirm.hidden = false;
      });
    }
  }

  let picks = () => [];
  if (page === "run") picks = runPage();
  else if (page === "diff") diffPage();
  else if (page === "store") storePage();
  if (document.body.dataset.allowWrite === "true") writes(picks);
})();
