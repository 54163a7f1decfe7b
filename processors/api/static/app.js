// crm-stream web view: the campaign list and one campaign (funnel, rates, chart), refreshed live
// from the query API (openapi.yaml). Plain JS, no build step; the chart is the vendored uPlot.
//
// Every number shown carries data-field / data-value (the API's value, unformatted), so a test
// can compare the page with the API without parsing formatted text.
(() => {
  "use strict";

  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.min(60000, Math.max(250, Number(params.get("refresh")) || 2000));
  const ANCHOR_EVERY_MS = 30000;
  // The campaign view follows the latest data: this many windows before it, and room after it.
  const SPAN = { "1m": { back: 120, ahead: 60 }, "1h": { back: 168, ahead: 24 } };
  const WINDOW_MS = { "1m": 60000, "1h": 3600000 };
  const STEPS = [
    ["SEND", "Send"],
    ["DELIVERY", "Delivery"],
    ["OPEN", "Open"],
    ["CLICK", "Click"],
  ];
  const RATES = [
    ["delivery_rate", "Delivery rate", "DELIVERY / SEND"],
    ["unique_open_rate", "Unique open rate", "unique OPEN / unique DELIVERY"],
    ["unique_click_rate", "Unique click rate", "unique CLICK / unique DELIVERY"],
    ["click_to_open_rate", "Click-to-open rate", "unique CLICK / unique OPEN"],
    ["bounce_rate", "Bounce rate", "BOUNCE / SEND"],
    ["unsubscribe_rate", "Unsubscribe rate", "UNSUBSCRIBE / DELIVERY"],
  ];
  const count = (t, type) => t.event_type_counts[type] || 0;
  const unique = (t, type) => t.uniques.by_event_type[type] || 0;
  const COLUMNS = [
    { key: "vendor", label: "Vendor", type: "text", get: (c) => c.vendor },
    { key: "app_id", label: "App ID", type: "text", get: (c) => c.app_id },
    { key: "campaign_id", label: "Campaign ID", type: "id", get: (c) => c.campaign_id },
    { key: "campaign_name", label: "Name", type: "text", get: (c) => c.campaign_name },
    { key: "sends", label: "Sends", type: "int", get: (c) => count(c.totals, "SEND") },
    { key: "deliveries", label: "Deliv\u00ADeries", type: "int", get: (c) => count(c.totals, "DELIVERY") },
    { key: "unique_opens", label: "Unique opens", type: "int", get: (c) => unique(c.totals, "OPEN") },
    { key: "unique_clicks", label: "Unique clicks", type: "int", get: (c) => unique(c.totals, "CLICK") },
    ...RATES.map(([key, label]) => ({
      // A soft hyphen lets the long header wrap.
      key, label: label.replace(" rate", "").replace("Unsubscribe", "Unsub\u00ADscribe"),
      type: "rate", get: (c) => c.rates[key],
    })),
    { key: "total", label: "Events", type: "int", get: (c) => c.totals.total },
    { key: "last_window_end", label: "Last activity", type: "time", get: (c) => c.last_window_end },
  ];
  const COLORS = { SEND: "#64748b", DELIVERY: "#2563eb", OPEN: "#16a34a", CLICK: "#ea580c" };

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, text) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // --- formatting ---------------------------------------------------------------------------

  const intFmt = new Intl.NumberFormat("en-US");
  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(ms) {
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
  }
  function fmt(type, v) {
    if (v === null || v === undefined) return "—";
    if (type === "int") return intFmt.format(v);
    if (type === "rate") return `${(v * 100).toFixed(1)}%`;
    if (type === "time") return fmtTime(v).replace(" ", "\n"); // date above time (CSS: pre)
    return String(v);
  }
  // A number element: the formatted text, and the API's value in data-value ("" for null).
  function setValue(node, type, v) {
    const raw = v === null || v === undefined ? "" : String(v);
    if (node.dataset.value === raw && node.dataset.type === type) return;
    node.dataset.value = raw;
    node.dataset.type = type;
    node.textContent = fmt(type, v);
    node.classList.toggle("null", raw === "");
  }

  // --- API ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.error ? body.error : `HTTP ${status}`);
      this.status = status;
      this.parameter = body && body.parameter;
    }
  }
  async function api(path, query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== "" && v !== null && v !== undefined) qs.set(k, String(v));
    }
    const url = `api/${path}${qs.toString() ? `?${qs}` : ""}`;
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // --- state --------------------------------------------------------------------------------

  const list = {
    sort: { key: "last_window_end", dir: "desc" },
    data: null,
    rows: new Map(), // campaign id -> <tr>
    refreshes: 0,
  };
  const view = {
    id: null,
    window: "1m",
    anchor: null, // end of the latest window with data, ms
    anchoredAt: 0,
    data: null,
    signature: "",
    chart: null,
    refreshes: 0,
  };

  function showError(message) {
    const box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  // --- the list -----------------------------------------------------------------------------

  // "Last 24 hours" ends where the server's clock says the current window ends (the list's
  // `to`), not at this browser's clock.
  function listQuery() {
    const span = Number($("range").value);
    const end = list.data ? list.data.to : Date.now();
    return {
      q: $("q").value.trim(),
      vendor: $("vendor").value,
      window: $("window").value,
      from: span ? end - span : "",
      limit: 1000,
    };
  }

  function buildHeader() {
    const row = document.querySelector("#campaigns thead tr");
    for (const col of COLUMNS) {
      const th = el("th", { scope: "col", "data-column": col.key, class: `col-${col.type}` });
      const button = el("button", { type: "button" }, col.label);
      button.addEventListener("click", () => {
        const same = list.sort.key === col.key;
        const numeric = col.type !== "text" && col.type !== "id";
        list.sort = {
          key: col.key,
          dir: same ? (list.sort.dir === "asc" ? "desc" : "asc") : (numeric ? "desc" : "asc"),
        };
        renderList();
      });
      th.append(button);
      row.append(th);
    }
  }

  function compare(col, dir) {
    const sign = dir === "asc" ? 1 : -1;
    return (a, b) => {
      const x = col.get(a);
      const y = col.get(b);
      // Nulls (no name, no denominator) last whichever the direction.
      if (x === null || x === undefined) return y === null || y === undefined ? a.id.localeCompare(b.id) : 1;
      if (y === null || y === undefined) return -1;
      const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
      return c !== 0 ? sign * c : a.id.localeCompare(b.id);
    };
  }

  function makeRow(c) {
    const tr = el("tr", { "data-campaign-id": c.id });
    for (const col of COLUMNS) {
      const td = el("td", { "data-field": col.key, class: `col-${col.type}` });
      if (col.type === "id") {
        const a = el("a", { href: `#/c/${c.id}` });
        td.append(a);
      }
      tr.append(td);
    }
    return tr;
  }

  function fillRow(tr, c) {
    tr.classList.toggle("selected", c.id === view.id);
    for (const td of tr.children) {
      const col = COLUMNS.find((k) => k.key === td.dataset.field);
      const v = col.get(c);
      const target = col.type === "id" ? td.firstChild : td;
      if (col.type === "int" || col.type === "rate" || col.type === "time") {
        setValue(target, col.type, v);
      } else {
        const text = v === null || v === undefined ? "" : v;
        td.dataset.value = text;
        target.textContent = text === "" ? "—" : text;
        td.classList.toggle("null", text === "");
      }
    }
  }

  function renderList() {
    const data = list.data;
    if (!data) return;
    for (const th of document.querySelectorAll("#campaigns th")) {
      const key = th.dataset.column;
      th.setAttribute("aria-sort", key === list.sort.key ? (list.sort.dir === "asc" ? "ascending" : "descending") : "none");
    }
    const col = COLUMNS.find((c) => c.key === list.sort.key);
    const campaigns = [...data.campaigns].sort(compare(col, list.sort.dir));
    const tbody = document.querySelector("#campaigns tbody");
    const seen = new Set();
    for (const c of campaigns) {
      let tr = list.rows.get(c.id);
      if (!tr) {
        tr = makeRow(c);
        list.rows.set(c.id, tr);
      }
      fillRow(tr, c);
      tbody.append(tr); // moves an existing row into sorted position
      seen.add(c.id);
    }
    for (const [id, tr] of list.rows) {
      if (!seen.has(id)) {
        tr.remove();
        list.rows.delete(id);
      }
    }
    $("list-empty").hidden = campaigns.length > 0;
    $("list-range").textContent =
      `${data.window} windows, ${fmtTime(data.from)} – ${fmtTime(data.to)} · ${campaigns.length} campaigns`;
    const table = $("campaigns");
    table.dataset.count = String(campaigns.length);
    table.dataset.sort = `${list.sort.key}:${list.sort.dir}`;
  }

  async function refreshList() {
    list.data = await api("campaigns", listQuery());
    list.refreshes += 1;
    $("campaigns").dataset.refreshes = String(list.refreshes);
    renderList();
  }

  // --- one campaign -------------------------------------------------------------------------

  function buildCampaignView() {
    const funnel = $("funnel");
    for (const [type, label] of STEPS) {
      const li = el("li", { "data-step": type });
      const bar = el("span", { class: "bar" });
      const fill = el("span", { class: "fill" });
      fill.style.background = COLORS[type];
      bar.append(fill);
      li.append(
        el("span", { class: "step" }, label),
        bar,
        el("span", { class: "num", "data-field": "count" }),
        el("span", { class: "num uniq", "data-field": "uniques" }),
        el("span", { class: "num conv", "data-field": "conversion" }),
      );
      funnel.append(li);
    }
    const head = el("li", { class: "head", "aria-hidden": "true" });
    head.append(el("span"), el("span"), el("span", { class: "num" }, "events"),
      el("span", { class: "num" }, "unique"), el("span", { class: "num" }, "of previous"));
    funnel.prepend(head);
    const rates = $("rates");
    for (const [key, label, formula] of RATES) {
      const div = el("div", { "data-rate": key });
      const dd = el("dd", { "data-field": key });
      div.append(el("dt", {}, label), dd, el("small", {}, formula));
      rates.append(div);
    }
    $("c-window").addEventListener("change", (e) => {
      view.window = e.target.value;
      view.anchoredAt = 0; // ranges differ by window: find the latest window again
      view.signature = "";
      refreshNow();
    });
  }

  function campaignQuery() {
    const size = WINDOW_MS[view.window];
    const span = SPAN[view.window];
    const end = Math.ceil(view.anchor / size) * size;
    return { window: view.window, from: Math.max(0, end - span.back * size), to: end + span.ahead * size };
  }

  async function refreshCampaign() {
    const id = view.id;
    const path = `campaigns/${encodeURIComponent(id)}`;
    if (view.anchor === null || Date.now() - view.anchoredAt > ANCHOR_EVERY_MS) {
      // The latest window with data, over the longest default range (1h windows).
      const latest = await api(path, { window: "1h" });
      view.anchor = Math.max(view.anchor || 0, latest.last_window_end || Date.now());
      view.anchoredAt = Date.now();
    }
    const data = await api(path, campaignQuery());
    if (id !== view.id) return;
    if (data.last_window_end && data.last_window_end > view.anchor) view.anchor = data.last_window_end;
    view.data = data;
    view.refreshes += 1;
    $("campaign-view").dataset.refreshes = String(view.refreshes);
    renderCampaign();
  }

  function renderCampaign() {
    const c = view.data;
    const section = $("campaign-view");
    section.dataset.campaignId = c.id;
    section.dataset.window = c.window;
    section.dataset.from = String(c.from);
    section.dataset.to = String(c.to);
    section.dataset.updatedAt = c.updated_at === null ? "" : String(c.updated_at);
    const name = $("c-name");
    name.textContent = c.campaign_name === null ? "(no name)" : c.campaign_name;
    name.classList.toggle("null", c.campaign_name === null);
    for (const [node, v] of [["c-vendor", c.vendor], ["c-app-id", c.app_id], ["c-campaign-id", c.campaign_id]]) {
      $(node).textContent = v === null ? "—" : v;
      $(node).dataset.value = v === null ? "" : v;
    }
    $("c-window").value = c.window;
    $("c-range").textContent = `${fmtTime(c.from)} – ${fmtTime(c.to)}, following the latest window`;

    const t = c.totals;
    const top = Math.max(1, ...STEPS.map(([type]) => count(t, type)));
    let previous = null;
    for (const [type] of STEPS) {
      const li = document.querySelector(`#funnel li[data-step="${type}"]`);
      const n = count(t, type);
      const u = unique(t, type);
      li.querySelector(".fill").style.width = `${(100 * n) / top}%`;
      setValue(li.querySelector('[data-field="count"]'), "int", n);
      setValue(li.querySelector('[data-field="uniques"]'), "int", u);
      setValue(li.querySelector('[data-field="conversion"]'), "rate", previous === null ? null : (previous ? u / previous : null));
      previous = u;
    }
    const totals = $("c-totals");
    totals.replaceChildren(
      "Events ", valueSpan("total", "int", t.total),
      " · unique recipients ", valueSpan("recipients", "int", t.uniques.recipients),
      " · windows with events ", valueSpan("points", "int", c.series.length),
    );
    for (const [key] of RATES) setValue(document.querySelector(`#rates [data-field="${key}"]`), "rate", c.rates[key]);
    const note = $("uniques-note");
    note.replaceChildren(
      "Recipients are user ids, else device ids. Unique counts are HyperLogLog estimates (lg_k ",
      valueSpan("lg_k", "int", t.uniques.lg_k), ", relative standard error ±",
      valueSpan("error_bound", "rate", t.uniques.error_bound), "); ",
      valueSpan("unattributed", "int", t.uniques.unattributed),
      " events had neither id: they are counted in events, not in uniques.",
    );
    drawChart(c);
  }

  function valueSpan(field, type, v) {
    const span = el("span", { "data-field": field });
    setValue(span, type, v);
    return span;
  }

  // --- chart --------------------------------------------------------------------------------

  const CHART_SERIES = [
    { label: "Sends", type: "SEND", get: (p) => count(p, "SEND") },
    { label: "Deliveries", type: "DELIVERY", get: (p) => count(p, "DELIVERY") },
    { label: "Opens", type: "OPEN", get: (p) => count(p, "OPEN") },
    { label: "Unique opens", type: "OPEN", dash: [5, 4], get: (p) => unique(p, "OPEN") },
    { label: "Clicks", type: "CLICK", get: (p) => count(p, "CLICK") },
  ];

  // One column per window from the first to the last with events; a window without a point
  // has no events (the API leaves it out), so it is drawn as zero.
  function chartData(c) {
    const size = WINDOW_MS[c.window];
    const xs = [];
    const ys = CHART_SERIES.map(() => []);
    const byStart = new Map(c.series.map((p) => [p.window_start, p]));
    if (c.series.length) {
      const first = c.series[0].window_start;
      const last = c.series[c.series.length - 1].window_start;
      for (let at = first; at <= last; at += size) {
        xs.push(at / 1000);
        const p = byStart.get(at);
        CHART_SERIES.forEach((s, i) => ys[i].push(p ? s.get(p) : 0));
      }
    }
    return [xs, ...ys];
  }

  function chartSize() {
    const box = $("chart");
    return { width: Math.max(320, box.clientWidth), height: 280 };
  }

  function drawChart(c) {
    const box = $("chart");
    const last = c.series.length ? c.series[c.series.length - 1] : null;
    const signature = `${c.id}|${c.window}|${c.from}|${c.series.length}|${c.updated_at}|${last ? last.total : 0}`;
    if (signature === view.signature && view.chart) return;
    view.signature = signature;
    const data = chartData(c);
    if (view.chart && view.chart.series.length === CHART_SERIES.length + 1 && box.dataset.window === c.window) {
      view.chart.setData(data);
    } else {
      if (view.chart) view.chart.destroy();
      box.replaceChildren();
      const opts = {
        ...chartSize(),
        scales: { x: { time: true } },
        axes: [{}, { label: `events per ${c.window} window`, size: 60 }],
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
        series: [
          { label: "Window (UTC)", value: (u, v) => (v === null ? "—" : fmtTime(v * 1000)) },
          ...CHART_SERIES.map((s) => ({
            label: s.label,
            stroke: COLORS[s.type],
            width: 2,
            dash: s.dash,
            points: { show: c.series.length < 2 },
          })),
        ],
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      };
      view.chart = new uPlot(opts, data, box);
    }
    box.dataset.window = c.window;
    box.dataset.points = String(data[0].length);
    box.dataset.lastWindowStart = last ? String(last.window_start) : "";
    box.dataset.drawnAt = String(Date.now());
  }

  window.addEventListener("resize", () => {
    if (view.chart) view.chart.setSize(chartSize());
  });

  // --- routing and the refresh loop ---------------------------------------------------------

  function route() {
    const m = location.hash.match(/^#\/c\/([A-Za-z0-9_-]+)$/);
    const id = m ? m[1] : null;
    if (id !== view.id) {
      view.id = id;
      view.anchor = null;
      view.data = null;
      view.signature = "";
      if (view.chart) {
        view.chart.destroy();
        view.chart = null;
      }
      $("chart").replaceChildren();
      $("chart").dataset.points = "0";
    }
    $("campaign-view").hidden = !id;
    if (id) $("campaign-view").scrollIntoView({ block: "start" });
    renderList();
    refreshNow();
  }

  let timer = null;
  let running = null;
  let pending = false;
  async function tick() {
    clearTimeout(timer);
    try {
      const jobs = [refreshList()];
      if (view.id) jobs.push(refreshCampaign());
      await Promise.all(jobs);
      showError(null);
      setStatus("live", `Live · refreshed ${new Date().toLocaleTimeString("en-GB", { timeZone: "UTC" })} UTC`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && view.id) {
        showError(`No such campaign: ${view.id}`);
      } else if (err instanceof ApiError) {
        showError(err.parameter ? `${err.message} (parameter ${err.parameter})` : err.message);
      } else {
        setStatus("error", "Disconnected · retrying");
      }
    } finally {
      timer = setTimeout(refreshNow, REFRESH_MS);
    }
  }
  // One refresh at a time; a request made while one runs starts right after it.
  function refreshNow() {
    if (running) {
      pending = true;
      return;
    }
    running = tick().finally(() => {
      running = null;
      if (pending) {
        pending = false;
        refreshNow();
      }
    });
  }

  let typing = null;
  function init() {
    buildHeader();
    buildCampaignView();
    $("q").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(refreshNow, 250);
    });
    for (const id of ["vendor", "window", "range"]) $(id).addEventListener("change", refreshNow);
    $("filters").addEventListener("submit", (e) => {
      e.preventDefault();
      refreshNow();
    });
    $("c-controls").addEventListener("submit", (e) => e.preventDefault());
    window.addEventListener("hashchange", route);
    route();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
