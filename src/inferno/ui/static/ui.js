// Inferno dashboard: charts from the data embedded in each page, then live updates over
// Server-Sent Events (/ui/live). Every string from the server is set as text, never HTML.
"use strict";
(function () {
  const page = document.body.dataset.page;
  const dataEl = document.getElementById("page-data");
  const data = dataEl ? JSON.parse(dataEl.textContent) : {};
  const charts = [];

  function fmtTime(el) {
    const ts = parseFloat(el.dataset.ts);
    if (!isNaN(ts)) el.textContent = new Date(ts * 1000).toLocaleString();
  }
  document.querySelectorAll("time[data-ts]").forEach(fmtTime);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  const COLORS = ["#58a6ff", "#f85149", "#3fb950", "#d29922"];
  function chart(target, labels, columns) {
    const width = Math.max(300, target.clientWidth || 400);
    const opts = {
      width: width, height: 200,
      series: [{}].concat(labels.map((label, i) => ({ label: label, stroke: COLORS[i % 4], width: 1.5, spanGaps: true }))),
      axes: [{ stroke: "#9aa3b2", grid: { stroke: "#2a2f3a" } }, { stroke: "#9aa3b2", grid: { stroke: "#2a2f3a" } }],
      scales: { x: { time: true } },
    };
    const u = new uPlot(opts, columns, target);
    charts.push(u);
    return u;
  }

  // Overview: three charts over the last hour, extended by the live stream.
  let overview = null;
  function overviewColumns(points) {
    const cols = [[], [], [], [], [], []];
    for (const p of points) {
      cols[0].push(p.t);
      cols[1].push(p.rps);
      cols[2].push(p.rps * p.error_rate);
      cols[3].push(p.ttft_p50 === null ? null : p.ttft_p50 * 1000);
      cols[4].push(p.ttft_p95 === null ? null : p.ttft_p95 * 1000);
      cols[5].push(p.tokens_per_s);
    }
    return cols;
  }
  if (page === "overview" && data.series) {
    const points = data.series.slice();
    const c = overviewColumns(points);
    overview = {
      points: points,
      rps: chart(document.getElementById("chart-rps"), ["requests/s", "errors/s"], [c[0], c[1], c[2]]),
      ttft: chart(document.getElementById("chart-ttft"), ["p50", "p95"], [c[0], c[3], c[4]]),
      tokens: chart(document.getElementById("chart-tokens"), ["tokens/s"], [c[0], c[5]]),
    };
  }
  function overviewPoint(p) {
    const pts = overview.points;
    if (pts.length && pts[pts.length - 1].t === p.t) pts[pts.length - 1] = p;
    else { pts.push(p); if (pts.length > 360) pts.shift(); }
    const c = overviewColumns(pts);
    overview.rps.setData([c[0], c[1], c[2]]);
    overview.ttft.setData([c[0], c[3], c[4]]);
    overview.tokens.setData([c[0], c[5]]);
  }

  // Autoscaler: desired vs actual per pool.
  if (page === "autoscaler" && data.pools) {
    document.querySelectorAll(".pool-chart").forEach((target) => {
      const pts = data.pools[target.dataset.pool] || [];
      chart(target, ["desired", "actual", "starting"],
        [pts.map((p) => p.t), pts.map((p) => p.desired), pts.map((p) => p.actual), pts.map((p) => p.starting)]);
    });
  }

  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");
  const ms = (v) => (v === null || v === undefined ? "–" : Math.round(1000 * v) + " ms");
  const KPI = {
    rps: (s) => s.rps.toFixed(2), error_rate: (s) => pct(s.error_rate),
    ttft_p50: (s) => ms(s.ttft_p50), ttft_p95: (s) => ms(s.ttft_p95),
    tokens_per_s: (s) => s.tokens_per_s.toFixed(1), cache_hit_rate: (s) => pct(s.cache_hit_rate),
    cost_per_hour: (s) => "$" + s.cost_per_hour.toFixed(4),
  };

  function addEvents(events) {
    const list = document.getElementById("timeline");
    if (!list || !events.length) return;
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    for (const e of events) {
      const li = el("li", "ev ev-" + e.kind);
      li.dataset.id = e.id;
      const t = el("time"); t.dataset.ts = e.ts; fmtTime(t);
      li.append(t, el("span", "kind", e.kind.replace(/_/g, " ")), " ");
      if (e.node) li.append(el("b", null, e.node), " ");
      li.append(el("span", "detail", e.detail));
      if (e.count > 1) li.append(" ", el("span", "count", "×" + e.count));
      list.prepend(li);
    }
  }

  function renderNodes(nodes) {
    const body = document.getElementById("nodes");
    if (!body) return;
    body.replaceChildren();
    if (!nodes.length) {
      const tr = el("tr", "empty"); const td = el("td", null, "No nodes have registered.");
      td.colSpan = 9; tr.append(td); body.append(tr); return;
    }
    for (const n of nodes) {
      const tr = el("tr"); tr.dataset.node = n.id;
      const name = el("td"); name.append(el("b", null, n.id), el("br"), el("small", null, n.address + " · " + n.models.join(", ")));
      const state = el("td"); state.append(el("span", "badge badge-" + n.status, n.status));
      const breaker = n.breaker.replace("_", "-") + (n.ejected_for_s ? " (" + n.ejected_for_s + " s)" : "");
      const strip = el("span", "strip");
      for (const m of n.strip) strip.append(el("i", m.errors ? "bad" : (m.requests ? "ok" : "")));
      const stripTd = el("td"); stripTd.append(strip);
      tr.append(name, state, el("td", null, breaker), el("td", null, n.in_flight + " / " + n.cap),
        el("td", null, n.queue_depth), el("td", null, n.tokens_per_s), el("td", null, n.ttft_ms + " ms"),
        el("td", "err", n.last_error || ""), stripTd);
      body.append(tr);
    }
  }

  // Live updates for the pages that show live state.
  if ((page === "overview" || page === "nodes") && window.EventSource) {
    const dot = document.getElementById("live");
    const src = new EventSource("/ui/live?after=" + encodeURIComponent(data.after || 0));
    src.addEventListener("snapshot", (msg) => {
      const snap = JSON.parse(msg.data);
      if (dot) dot.classList.add("on");
      if (page === "overview") {
        for (const k in KPI) {
          const b = document.querySelector('[data-kpi="' + k + '"]');
          if (b) b.textContent = KPI[k](snap.summary);
        }
        const nodesKpi = document.querySelector('[data-kpi="nodes"]');
        if (nodesKpi) nodesKpi.textContent = snap.nodes.length;
        addEvents(snap.events);
        if (overview) overviewPoint(snap.point);
      } else {
        renderNodes(snap.nodes);
      }
    });
    src.onerror = () => { if (dot) dot.classList.remove("on"); };
    window.addEventListener("pagehide", () => src.close());
  }

  // Requests: a row's details on click (one call), bodies included when they are logged.
  const table = document.getElementById("requests");
  if (page === "requests" && table) {
    const show = async (tr) => {
      const id = tr.dataset.id;
      if (!id) return;
      table.querySelectorAll("tr.sel").forEach((r) => r.classList.remove("sel"));
      tr.classList.add("sel");
      const resp = await fetch("/ui/api/requests/" + encodeURIComponent(id), { credentials: "same-origin" });
      const body = await resp.json();
      document.getElementById("detail-id").textContent = id;
      document.getElementById("detail-body").textContent = JSON.stringify(body, null, 2);
      document.getElementById("detail").hidden = false;
    };
    table.addEventListener("click", (ev) => { const tr = ev.target.closest("tr"); if (tr) show(tr); });
    table.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { const tr = ev.target.closest("tr"); if (tr) show(tr); } });
  }

  // Batches: a batch's details on click (one call); the open batches' progress live.
  const batchTable = document.getElementById("batches");
  const OPEN_BATCH = ["validating", "in_progress", "finalizing", "cancelling"];
  if (page === "batches" && batchTable) {
    const showBatch = async (tr) => {
      const id = tr.dataset.batch;
      if (!id) return;
      batchTable.querySelectorAll("tr.sel").forEach((r) => r.classList.remove("sel"));
      tr.classList.add("sel");
      const resp = await fetch("/ui/api/batches/" + encodeURIComponent(id), { credentials: "same-origin" });
      const b = await resp.json();
      document.getElementById("detail-id").textContent = id;
      const files = document.getElementById("detail-files");
      files.replaceChildren();
      for (const [label, key] of [["input", "input_file_id"], ["output", "output_file_id"], ["errors", "error_file_id"]]) {
        if (!b[key]) continue;
        const a = el("a", null, label + " file");
        a.href = "/ui/files/" + encodeURIComponent(b[key]) + "/content";
        a.dataset.file = b[key];
        a.setAttribute("download", b[key] + ".jsonl");
        files.append(a, " ");
      }
      const errors = document.getElementById("detail-errors");
      errors.replaceChildren();
      for (const e of b.errors || []) {
        const where = e.line !== undefined && e.line !== null ? "line " + e.line + ": " : "";
        errors.append(el("li", null, where + (e.code ? e.code + ": " : "") + (e.message || "")));
      }
      document.getElementById("detail-body").textContent = JSON.stringify(b, null, 2);
      document.getElementById("detail").hidden = false;
    };
    const rowOf = (ev) => (ev.target.closest("form, a") ? null : ev.target.closest("tr"));
    batchTable.addEventListener("click", (ev) => { const tr = rowOf(ev); if (tr) showBatch(tr); });
    batchTable.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { const tr = rowOf(ev); if (tr) showBatch(tr); } });

    if (data.open && data.open.length && window.EventSource) {
      const dot = document.getElementById("live");
      const src = new EventSource("/ui/live?view=batches&ids=" + encodeURIComponent(data.open.join(",")));
      src.addEventListener("batches", (msg) => {
        if (dot) dot.classList.add("on");
        let open = 0;
        for (const b of JSON.parse(msg.data)) {
          const tr = batchTable.querySelector('tr[data-batch="' + CSS.escape(b.id) + '"]');
          if (!tr) continue;
          const badge = tr.querySelector(".status");
          badge.textContent = b.status.replace(/_/g, " ");
          badge.className = "badge badge-batch-" + b.status + " status";
          const bar = tr.querySelector("progress");
          bar.max = b.total || 1;
          bar.value = b.completed + b.failed;
          tr.querySelector(".done").textContent = b.completed;
          tr.querySelector(".failed").textContent = b.failed;
          tr.querySelector(".total").textContent = b.total;
          if (b.status !== "validating" && b.status !== "in_progress") tr.querySelector(".action").replaceChildren();
          if (OPEN_BATCH.includes(b.status)) open++;
        }
        if (!open) { src.close(); if (dot) dot.classList.remove("on"); }  // nothing moves any more
      });
      src.onerror = () => { if (dot) dot.classList.remove("on"); };
      window.addEventListener("pagehide", () => src.close());
    }
  }

  window.addEventListener("resize", () => {
    for (const u of charts) u.setSize({ width: Math.max(300, u.root.parentElement.clientWidth), height: 200 });
  });
})();
