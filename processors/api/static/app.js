// crm-stream web view: the campaign list and one campaign (funnel, rates, chart, messages), refreshed live
// from the query API (openapi.yaml). Plain JS, no build step; the chart is the vendored uPlot.
//
// Every number shown carries data-field / data-value (the API's value, unformatted), so a test
// can compare the page with the API without parsing formatted text.
(() => {
  "use strict";

  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.min(60000, Math.max(250, Number(params.get("refresh")) || 2000));
  const HELD_EVERY_MS = 30000;
  const MAX_WINDOWS = 10000; // the most windows the API answers for one range
  const TOKEN_KEY = "crm-stream-api-token";
  const STEPS = [
    ["SEND", "Send"],
    ["DELIVERY", "Delivery"],
    ["OPEN", "Open"],
    ["CLICK", "Click"],
  ];
  const RATES = [
    ["delivery_rate", "Delivery rate", "DELIVERY / SEND"],
    ["unique_open_rate", "Unique open rate", "unique OPEN / unique DELIVERY"],
    // The vendors' other convention (per send, as Leanplum; per delivery above, as Braze).
    ["send_open_rate", "Send-based open rate", "unique OPEN / unique SEND"],
    ["unique_click_rate", "Unique click rate", "unique CLICK / unique DELIVERY"],
    ["click_to_open_rate", "Click-to-open rate", "unique CLICK / unique OPEN"],
    ["bounce_rate", "Bounce rate", "BOUNCE / SEND"],
    ["unsubscribe_rate", "Unsubscribe rate", "UNSUBSCRIBE / DELIVERY"],
  ];
  const count = (t, type) => t.event_type_counts[type] || 0;
  const unique = (t, type) => t.uniques.by_event_type[type] || 0;
  // Events of every type but these four: bounces, unsubscribes, SEND_REQUESTED, OTHER, ...
  const other = (t) => t.total - STEPS.reduce((n, [type]) => n + count(t, type), 0);
  const NO_CAMPAIGN = "(no campaign)";
  const NO_CAMPAIGN_TITLE = "Events that carry no campaign id (app opens, sends outside a campaign, " +
    "vendor events of the app itself), counted together per vendor and app";
  const COLUMNS = [
    { key: "vendor", label: "Vendor", type: "text", get: (c) => c.vendor },
    { key: "app_id", label: "App ID", type: "text", get: (c) => c.app_id },
    { key: "campaign_id", label: "Campaign ID", type: "id", get: (c) => c.campaign_id },
    { key: "campaign_name", label: "Name", type: "text", get: (c) => c.campaign_name },
    { key: "sends", label: "Sends", type: "int", get: (c) => count(c.totals, "SEND") },
    { key: "deliveries", label: "Deliv\u00ADeries", type: "int", get: (c) => count(c.totals, "DELIVERY") },
    { key: "opens", label: "Opens", type: "int", get: (c) => count(c.totals, "OPEN") },
    { key: "clicks", label: "Clicks", type: "int", get: (c) => count(c.totals, "CLICK") },
    { key: "other", label: "Other events", type: "int", get: (c) => other(c.totals),
      title: "Events of the other types (bounces, unsubscribes, send requests, ...): " +
        "sends + deliveries + opens + clicks + other events = events" },
    { key: "total", label: "Events", type: "int", get: (c) => c.totals.total },
    { key: "unique_opens", label: "Unique opens", type: "int", get: (c) => unique(c.totals, "OPEN") },
    { key: "unique_clicks", label: "Unique clicks", type: "int", get: (c) => unique(c.totals, "CLICK") },
    ...RATES.map(([key, label]) => ({
      // A soft hyphen lets the long header wrap.
      key, label: label.replace(" rate", "").replace("Unsubscribe", "Unsub\u00ADscribe"),
      type: "rate", get: (c) => c.rates[key],
    })),
    { key: "last_window_end", label: "Last activity", type: "time", get: (c) => c.last_window_end },
  ];
  // The campaign's per-message table: one row per message id, then the buckets (openapi.yaml,
  // MessageRow), in the API's order (by total, most first).
  const MESSAGE_KINDS = {
    value: null,
    overflow: ["(more messages)", "Message ids beyond the bound a window keeps counts for " +
      "(CRM_STATS_MAX_MESSAGES), counted together"],
    none: ["(no message)", "Events that carry no message id (e.g. Pinpoint, campaign-level events)"],
    not_broken_down: ["(not broken down)", "Events counted before the worker kept message ids"],
  };
  const MESSAGE_COLUMNS = [
    { key: "message", label: "Message", type: "text" },
    ...[["SEND", "Sends"], ["DELIVERY", "Deliveries"], ["OPEN", "Opens"], ["CLICK", "Clicks"]].map(
      ([type, label]) => ({ key: type, label, type: "int", get: (r) => count(r, type) })),
    { key: "other", label: "Other events", type: "int", get: (r) => r.total - STEPS.reduce((n, [t]) => n + count(r, t), 0) },
    { key: "total", label: "Events", type: "int", get: (r) => r.total },
  ];
  const COLORS = { SEND: "#64748b", DELIVERY: "#2563eb", OPEN: "#16a34a", CLICK: "#ea580c" };
  // The campaign's variants (openapi.yaml, VariantRow): one column per row of the API, in its
  // order; the funnel, conversion and lift against the control group read across.
  const VARIANT_KINDS = {
    value: null,
    control: ["(control group)", "Recipients held out of the message: the campaign's CONTROL events"],
    overflow: ["(more variants)", "Variant ids beyond the bound a window keeps (CRM_STATS_MAX_VARIANTS), together"],
    none: ["(no variant)", "Events that carry no variant id (sends outside an experiment, conversions, ...)"],
    not_broken_down: ["(not broken down)", "Events counted before the worker kept variants"],
  };
  const pp = (v) => `${v >= 0 ? "+" : ""}${(v * 100).toFixed(1)}`;
  const interval = (ci, unit) => `${pp(ci[0])}${unit} … ${pp(ci[1])}${unit}`;
  const lift = (r) => r.lift || {};
  const VARIANT_ROWS = [
    { key: "recipients", label: "Recipients", type: "int", get: (r) => (r.uniques ? r.uniques.recipients : null) },
    { key: "received", label: "Received (unique send, delivery or impression)", type: "int", get: (r) => r.received },
    { key: "SEND", label: "Sends", type: "int", get: (r) => count(r, "SEND") },
    { key: "DELIVERY", label: "Deliveries", type: "int", get: (r) => count(r, "DELIVERY") },
    { key: "unique_OPEN", label: "Unique opens", type: "int", get: (r) => (r.uniques ? r.uniques.by_event_type.OPEN || 0 : null) },
    { key: "unique_CLICK", label: "Unique clicks", type: "int", get: (r) => (r.uniques ? r.uniques.by_event_type.CLICK || 0 : null) },
    { key: "unique_open_rate", label: "Unique open rate", type: "rate", get: (r) => r.rates.unique_open_rate },
    { key: "click_to_open_rate", label: "Click-to-open rate", type: "rate", get: (r) => r.rates.click_to_open_rate },
    { key: "converted", label: "Converted", type: "int", get: (r) => r.converted },
    { key: "conversion_rate", label: "Conversion rate", type: "rate", get: (r) => r.conversion_rate },
    { key: "lift_absolute", label: "Lift vs control (points)", type: "points", get: (r) => (r.lift ? r.lift.absolute : null) },
    { key: "lift_absolute_ci95", label: "95% interval", type: "interval", unit: " pts", get: (r) => lift(r).absolute_ci95 },
    { key: "lift_relative", label: "Relative lift", type: "points", unit: "%", get: (r) => (r.lift ? r.lift.relative : null) },
    { key: "lift_relative_ci95", label: "95% interval (relative)", type: "interval", unit: "%", get: (r) => lift(r).relative_ci95 },
    { key: "p_value", label: "p-value", type: "p", get: (r) => (r.lift ? r.lift.p_value : null) },
    { key: "verdict", label: "Verdict", type: "verdict", get: verdict },
  ];
  // What the page says of a row's lift: the API's `significant`, or why there is none.
  function verdict(r) {
    if (r.kind === "control") return "control group";
    if (r.kind !== "value") return "";
    if (r.significant === true) return "significant";
    if (r.significant === false) return "not significant";
    return "too small to say";
  }

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
  // The API token (CRM_API_TOKEN), when the server asks for one: kept in this tab only.
  const auth = {
    get token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
    set token(value) {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    },
    needed: false,
  };
  async function api(path, query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== "" && v !== null && v !== undefined) qs.set(k, String(v));
    }
    const url = `api/${path}${qs.toString() ? `?${qs}` : ""}`;
    const headers = { Accept: "application/json" };
    if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
    const response = await fetch(url, { headers, cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // --- state --------------------------------------------------------------------------------

  const list = {
    sort: { key: "last_window_end", dir: "desc" },
    data: null,
    query: null, // the query that data answers
    windows: null, // the windows the deployment keeps: label -> ms (the API's `windows`)
    held: null, // { from, to }: the first and last window with events, of any campaign
    heldAt: 0,
    serverTo: null, // the `to` the server defaults to (end of its current window)
    rows: new Map(), // campaign id -> <tr>
    refreshes: 0,
  };
  const view = {
    id: null,
    window: "", // "" = auto: the finest window showing the list's whole range
    data: null,
    partial: null,
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

  const floorTo = (ms, size) => Math.floor(ms / size) * size;
  const ceilTo = (ms, size) => Math.ceil(ms / size) * size;
  // <input type="datetime-local"> read and written as UTC.
  function parseUtc(text) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(text);
    return m ? Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5]) : "";
  }
  function formatUtc(ms) {
    return fmtTime(ms).replace(" UTC", "").replace(" ", "T");
  }

  // The list's query. "All data held" is the range from the first window with events to now,
  // or to the last window with events when that is too long (then at most the latest
  // MAX_WINDOWS windows of it); "Last 24 hours" ends where the
  // server's clock says the current window ends, not at this browser's clock.
  function listQuery() {
    const window = $("window").value; // "" until the windows are known: the server's default
    const size = list.windows && list.windows[window];
    const query = { q: $("q").value.trim(), vendor: $("vendor").value, window, limit: 1000 };
    const range = $("range").value;
    list.clipped = null;
    if (range === "custom") {
      query.from = parseUtc($("from").value);
      query.to = parseUtc($("to").value);
    } else if (range === "held") {
      if (list.held && size) {
        // Up to now when that fits (live data keeps coming), else up to the last data held.
        query.from = floorTo(list.held.from, size);
        const now = ceilTo(Math.max(list.held.to, list.serverTo || 0), size);
        if ((now - query.from) / size <= MAX_WINDOWS) return query; // `to`: the server's now
        query.to = ceilTo(list.held.to, size);
        if ((query.to - query.from) / size > MAX_WINDOWS) {
          list.clipped = { held: list.held, from: query.to - MAX_WINDOWS * size };
          query.from = list.clipped.from;
        }
      }
    } else if (range) {
      query.from = (list.serverTo || Date.now()) - Number(range);
    }
    return query;
  }

  // The extent of the data held: over the largest window's default range (10,000 of them:
  // 14 months of 1h windows), every campaign's first and last window with events.
  async function refreshHeld() {
    if (list.held && Date.now() - list.heldAt < HELD_EVERY_MS) return;
    const query = { limit: 1000 };
    let from = null;
    let to = null;
    for (let page = 0; page < 20; page += 1) {
      const body = await api("campaigns", query);
      setWindows(body.windows);
      if (!query.window) query.window = body.window;
      if (!list.serverTo || body.to > list.serverTo) list.serverTo = body.to;
      for (const c of body.campaigns) {
        if (c.first_window_start !== null) from = from === null ? c.first_window_start : Math.min(from, c.first_window_start);
        if (c.last_window_end !== null) to = to === null ? c.last_window_end : Math.max(to, c.last_window_end);
      }
      if (!body.next_cursor) break;
      query.cursor = body.next_cursor;
    }
    list.held = from === null ? null : { from, to };
    list.heldAt = Date.now();
    const table = $("campaigns");
    table.dataset.heldFrom = from === null ? "" : String(from);
    table.dataset.heldTo = to === null ? "" : String(to);
  }

  // The window selects offer exactly the windows the deployment keeps.
  function setWindows(windows) {
    const labels = Object.keys(windows);
    if (list.windows && Object.keys(list.windows).join() === labels.join()) return;
    list.windows = windows;
    const largest = labels.reduce((a, b) => (windows[b] > windows[a] ? b : a));
    const select = $("window");
    const keep = select.value;
    select.replaceChildren(...labels.map((w) => el("option", { value: w }, windowName(w))));
    select.value = labels.includes(keep) ? keep : largest;
    const detail = $("c-window");
    detail.replaceChildren(el("option", { value: "" }, "Auto"),
      ...labels.map((w) => el("option", { value: w }, windowName(w))));
    detail.value = labels.includes(view.window) ? view.window : "";
  }
  function windowName(label) {
    const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$/.exec(label);
    const units = { ms: "millisecond", s: "second", m: "minute", h: "hour", d: "day", w: "week" };
    if (!m) return label;
    const unit = units[m[2] || "s"];
    return `${m[1]} ${unit}${m[1] === "1" ? "" : "s"}`;
  }

  function buildHeader() {
    const row = document.querySelector("#campaigns thead tr");
    for (const col of COLUMNS) {
      const th = el("th", { scope: "col", "data-column": col.key, class: `col-${col.type}` });
      if (col.title) th.title = col.title;
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
        const campaignLess = col.type === "id" && text === "";
        target.textContent = campaignLess ? NO_CAMPAIGN : text === "" ? "—" : text;
        td.classList.toggle("null", text === "");
        td.classList.toggle("no-campaign", campaignLess);
        if (campaignLess) target.title = NO_CAMPAIGN_TITLE;
        else target.removeAttribute("title");
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
    const shown = data.total > campaigns.length ? `${campaigns.length} of ${data.total}` : `${campaigns.length}`;
    $("list-range").textContent =
      `${data.window} windows, ${fmtTime(data.from)} – ${fmtTime(data.to)} · ${shown} campaigns`;
    const note = $("list-note");
    const clipped = list.clipped;
    note.hidden = !clipped && data.total <= campaigns.length;
    note.textContent = clipped
      ? `The data held spans ${fmtTime(clipped.held.from)} – ${fmtTime(clipped.held.to)}; ` +
        `${MAX_WINDOWS.toLocaleString("en-US")} windows of ${data.window} show only its end, from ` +
        `${fmtTime(clipped.from)}. Choose a larger window to see all of it.`
      : `Showing the first ${campaigns.length} of ${data.total} campaigns: narrow the search, ` +
        "or download the CSV for all of them.";
    const table = $("campaigns");
    table.dataset.count = String(campaigns.length);
    table.dataset.total = String(data.total);
    table.dataset.window = data.window;
    table.dataset.from = String(data.from);
    table.dataset.to = String(data.to);
    table.dataset.sort = `${list.sort.key}:${list.sort.dir}`;
  }

  async function refreshList() {
    await refreshHeld();
    const query = listQuery();
    const data = await api("campaigns", query);
    if (auth.needed) return; // signed out while it ran: show nothing
    setWindows(data.windows);
    if (query.to === undefined || query.to === "") list.serverTo = data.to;
    list.data = data;
    list.query = query;
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
    const mhead = document.querySelector("#messages thead tr");
    for (const col of MESSAGE_COLUMNS) mhead.append(el("th", { scope: "col", class: `col-${col.type}` }, col.label));
    $("c-window").addEventListener("change", (e) => {
      view.window = e.target.value;
      view.signature = "";
      refreshNow();
    });
  }

  // The campaign over the list's range: first its figures in the list's own windows (which
  // say where its events lie), then the same events in the finest window that shows all of
  // them (or the window chosen), over whole windows of that size. When the chosen window
  // cannot show the whole range in MAX_WINDOWS, the latest MAX_WINDOWS are shown, and the
  // page says so.
  async function refreshCampaign() {
    const id = view.id;
    const path = `campaigns/${encodeURIComponent(id)}`;
    const range = { window: list.data.window, from: list.data.from, to: list.data.to };
    const whole = await api(path, range);
    if (id !== view.id || auth.needed) return;
    let data = whole;
    let partial = null;
    let auto = null;
    const first = whole.first_window_start;
    const last = whole.last_window_end;
    if (first !== null) {
      const labels = Object.keys(list.windows).sort((a, b) => list.windows[a] - list.windows[b]);
      auto = labels.find((w) => (ceilTo(last, list.windows[w]) - floorTo(first, list.windows[w])) / list.windows[w] <= MAX_WINDOWS) || range.window;
      const window = view.window && list.windows[view.window] ? view.window : auto;
      const size = list.windows[window];
      const query = { window, from: floorTo(first, size), to: ceilTo(last, size) };
      if ((query.to - query.from) / size > MAX_WINDOWS) {
        query.from = query.to - MAX_WINDOWS * size;
        partial = { from: query.from, window, whole };
      }
      if (query.window !== range.window || query.from !== range.from || query.to !== range.to) {
        data = await api(path, query);
        if (id !== view.id || auth.needed) return;
      }
    }
    view.data = data;
    view.whole = whole;
    view.partial = partial;
    view.auto = auto;
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
    name.textContent = c.campaign_name !== null ? c.campaign_name
      : c.campaign_id === null ? `${NO_CAMPAIGN}: events of no campaign` : "(no name)";
    name.classList.toggle("null", c.campaign_name === null);
    for (const [node, v] of [["c-vendor", c.vendor], ["c-app-id", c.app_id], ["c-campaign-id", c.campaign_id]]) {
      $(node).textContent = v === null ? (node === "c-campaign-id" ? NO_CAMPAIGN : "—") : v;
      $(node).dataset.value = v === null ? "" : v;
    }
    const autoOption = $("c-window").querySelector('option[value=""]');
    if (autoOption) autoOption.textContent = view.auto ? `Auto (${view.auto})` : "Auto";
    $("c-window").value = view.window && list.windows[view.window] ? view.window : "";
    const w = view.whole;
    $("c-range").textContent =
      `The list's range (${fmtTime(w.from)} – ${fmtTime(w.to)}); its events in ${c.window} windows: ` +
      `${fmtTime(c.from)} – ${fmtTime(c.to)}`;
    const partial = $("c-partial");
    partial.hidden = !view.partial;
    section.dataset.partial = view.partial ? "true" : "false";
    if (view.partial) {
      partial.textContent =
        `Partial: ${MAX_WINDOWS.toLocaleString("en-US")} windows of ${view.partial.window} show only ` +
        `the end of the list's range, from ${fmtTime(view.partial.from)}: ` +
        `${intFmt.format(c.totals.total)} of its ${intFmt.format(w.totals.total)} events. ` +
        "Choose a larger window to see all of them.";
    }

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
      " (other than the four steps: ", valueSpan("other", "int", other(t)), ")",
      " · unique recipients ", valueSpan("recipients", "int", t.uniques.recipients),
      " · windows with events ", valueSpan("points", "int", c.series.length),
    );
    for (const [key] of RATES) setValue(document.querySelector(`#rates [data-field="${key}"]`), "rate", c.rates[key]);
    renderMessages(c);
    renderVariants(c);
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

  function messageLabel(row) {
    return MESSAGE_KINDS[row.kind] ? MESSAGE_KINDS[row.kind][0] : row.message_id;
  }
  function renderMessages(c) {
    const rows = [...c.messages].sort((a, b) => b.total - a.total);
    const tbody = document.querySelector("#messages tbody");
    tbody.replaceChildren(...rows.map((r) => {
      const tr = el("tr", { "data-kind": r.kind, "data-message-id": r.message_id === null ? "" : r.message_id });
      for (const col of MESSAGE_COLUMNS) {
        const td = el("td", { "data-field": col.key, class: `col-${col.type}` });
        if (col.type === "int") setValue(td, "int", col.get(r));
        else {
          td.textContent = messageLabel(r);
          td.dataset.value = r.message_id === null ? "" : r.message_id;
          if (MESSAGE_KINDS[r.kind]) {
            td.classList.add("bucket");
            td.title = MESSAGE_KINDS[r.kind][1];
          }
        }
        tr.append(td);
      }
      return tr;
    }));
    $("messages").dataset.rows = String(rows.length);
  }

  function variantLabel(row) {
    return VARIANT_KINDS[row.kind] ? VARIANT_KINDS[row.kind][0] : row.variant_id;
  }
  function variantCell(row, spec) {
    const v = spec.get(row);
    const td = el("td", { "data-field": spec.key });
    if (spec.type === "int" || spec.type === "rate") {
      setValue(td, spec.type, v);
      return td;
    }
    td.dataset.value = v === null || v === undefined ? "" : Array.isArray(v) ? JSON.stringify(v) : String(v);
    if (v === null || v === undefined || v === "") {
      td.textContent = spec.type === "verdict" ? "" : "—";
      td.classList.add("null");
    } else if (spec.type === "points") td.textContent = `${pp(v)}${spec.unit || " pts"}`;
    else if (spec.type === "interval") td.textContent = interval(v, spec.unit);
    else if (spec.type === "p") td.textContent = v < 0.001 ? "< 0.001" : v.toFixed(3);
    else td.textContent = String(v);
    return td;
  }
  // The variants side by side: a column per API row (variants, the control group, the
  // buckets), a row per figure; the panel says so when the campaign has no variant at all.
  function renderVariants(c) {
    const rows = c.variants || [];
    const table = $("variants");
    const tested = rows.some((r) => r.kind === "value" || r.kind === "control");
    table.hidden = !tested;
    table.dataset.columns = String(rows.length);
    const head = table.querySelector("thead tr");
    head.replaceChildren(el("th", { scope: "col" }, "Variant"), ...rows.map((r) => {
      const th = el("th", { scope: "col", "data-kind": r.kind, "data-variant-id": r.variant_id === null ? "" : r.variant_id }, variantLabel(r));
      if (VARIANT_KINDS[r.kind]) {
        th.classList.add("bucket");
        th.title = VARIANT_KINDS[r.kind][1];
      }
      return th;
    }));
    table.querySelector("tbody").replaceChildren(...VARIANT_ROWS.map((spec) => {
      const tr = el("tr", { "data-row": spec.key });
      tr.append(el("th", { scope: "row" }, spec.label), ...rows.map((r) => variantCell(r, spec)));
      return tr;
    }));
    const control = rows.find((r) => r.kind === "control");
    $("variants-note").textContent = !tested
      ? "This campaign's events carry no variant id and it has no control group."
      : "Conversion rate: " + (c.rate_formulas ? c.rate_formulas.conversion_rate : "converted / received recipients") + ". " +
        (control ? "Lift is against the control group: " + (c.rate_formulas ? c.rate_formulas.lift : "") + ". "
          : "No control group (no CONTROL events): no lift. ") +
        "Converted recipients are HyperLogLog estimates, exact while small; the intervals leave out their error.";
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
    const size = list.windows[c.window];
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
      view.data = null;
      view.signature = "";
      if (view.chart) {
        view.chart.destroy();
        view.chart = null;
      }
      $("chart").replaceChildren();
      $("chart").dataset.points = "0";
    }
    $("campaign-view").hidden = !id || auth.needed;
    if (id) $("campaign-view").scrollIntoView({ block: "start" });
    renderList();
    refreshNow();
  }

  let timer = null;
  let running = null;
  let pending = false;
  async function tick() {
    clearTimeout(timer);
    if (auth.needed) return; // until signed in: timer is not re-armed, signing in refreshes
    try {
      await refreshList(); // the campaign follows the list's range
      if (view.id && !auth.needed) await refreshCampaign();
      if (auth.needed) return;
      showError(null);
      setStatus("live", `Live · refreshed ${new Date().toLocaleTimeString("en-GB", { timeZone: "UTC" })} UTC`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        askForToken(auth.token ? "The server refused this token." : "");
        return;
      } else if (err instanceof ApiError && err.status === 404 && view.id) {
        showError(`No such campaign: ${view.id}`);
      } else if (err instanceof ApiError) {
        showError(err.parameter ? `${err.message} (parameter ${err.parameter})` : err.message);
      } else {
        setStatus("error", "Disconnected · retrying");
      }
    }
    timer = setTimeout(refreshNow, REFRESH_MS);
  }

  // --- signing in ---------------------------------------------------------------------------

  function askForToken(message) {
    auth.needed = true;
    auth.token = "";
    clearTimeout(timer);
    $("login-view").hidden = false;
    $("list-view").hidden = true;
    $("campaign-view").hidden = true;
    $("logout").hidden = true;
    $("login-error").hidden = !message;
    $("login-error").textContent = message;
    showError(null);
    setStatus("error", "Sign in to see the figures");
    $("token").focus();
  }

  function signIn(token) {
    auth.token = token;
    auth.needed = false;
    $("token").value = "";
    $("login-view").hidden = true;
    $("list-view").hidden = false;
    $("logout").hidden = false;
    list.held = null; // another token may see other apps
    route();
  }

  function signOut() {
    list.data = null;
    list.held = null;
    for (const tr of list.rows.values()) tr.remove();
    list.rows.clear();
    askForToken("");
  }

  // --- CSV ----------------------------------------------------------------------------------

  // RFC 4180, and a text that a spreadsheet would run as a formula (=, +, -, @) starts with '.
  function csvCell(v, text) {
    if (v === null || v === undefined) return "";
    let out = String(v);
    if (text && /^[=+\-@\t\r]/.test(out)) out = `'${out}`;
    return /[",\r\n]/.test(out) ? `"${out.replace(/"/g, '""')}"` : out;
  }
  function csv(header, rows) {
    const lines = [header.map((h) => csvCell(h, true)).join(",")];
    for (const row of rows) lines.push(row.map(([v, text]) => csvCell(v, text)).join(","));
    return `${lines.join("\r\n")}\r\n`;
  }
  const iso = (ms) => (ms === null || ms === undefined ? null : new Date(ms).toISOString());
  function eventTypes(figures) {
    const types = new Set(STEPS.map(([type]) => type));
    for (const f of figures) for (const type of Object.keys(f.event_type_counts)) types.add(type);
    return [...types];
  }
  function download(name, text) {
    const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" })), download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }
  const stamp = (ms) => iso(ms).slice(0, 16).replace(/[-:]/g, "");

  // Every campaign of the list's query (every page, not only the 1,000 shown).
  async function listCsv() {
    const query = { ...list.query };
    delete query.cursor;
    const all = [];
    let body;
    do {
      body = await api("campaigns", query);
      all.push(...body.campaigns);
      query.cursor = body.next_cursor;
    } while (body.next_cursor);
    const types = eventTypes(all.map((c) => c.totals));
    const header = ["id", "vendor", "app_id", "campaign_id", "campaign_name", "window", "from", "to",
      "first_window_start", "last_window_end", "total", ...types.map((t) => `count_${t}`), "count_other",
      "unique_recipients", ...types.map((t) => `unique_${t}`), "unattributed", ...RATES.map(([key]) => key)];
    const rows = all.map((c) => [
      [c.id, true], [c.vendor, true], [c.app_id, true], [c.campaign_id, true], [c.campaign_name, true],
      [body.window], [iso(body.from)], [iso(body.to)], [iso(c.first_window_start)], [iso(c.last_window_end)],
      [c.totals.total], ...types.map((t) => [count(c.totals, t)]), [other(c.totals)],
      [c.totals.uniques.recipients], ...types.map((t) => [unique(c.totals, t)]), [c.totals.uniques.unattributed],
      ...RATES.map(([key]) => [c.rates[key]]),
    ]);
    download(`campaigns-${body.window}-${stamp(body.from)}-${stamp(body.to)}.csv`, csv(header, rows));
  }

  // The campaign's series as shown: one row per window with events.
  function seriesCsv() {
    const c = view.data;
    const types = eventTypes(c.series);
    const header = ["window_start", "window_end", "total", ...types.map((t) => `count_${t}`), "count_other",
      "unique_recipients", ...types.map((t) => `unique_${t}`), "unattributed"];
    const rows = c.series.map((p) => [
      [iso(p.window_start)], [iso(p.window_end)], [p.total], ...types.map((t) => [count(p, t)]), [other(p)],
      [p.uniques.recipients], ...types.map((t) => [unique(p, t)]), [p.uniques.unattributed],
    ]);
    download(`campaign-${c.id}-${c.window}-${stamp(c.from)}-${stamp(c.to)}.csv`, csv(header, rows));
  }

  // The campaign's messages as shown: one row per message id or bucket.
  function messagesCsv() {
    const c = view.data;
    const types = eventTypes(c.messages);
    const header = ["message_id", "kind", "label", "total", ...types.map((t) => `count_${t}`), "from", "to", "window"];
    const rows = c.messages.map((r) => [
      [r.message_id, true], [r.kind, true], [messageLabel(r), true], [r.total], ...types.map((t) => [count(r, t)]),
      [iso(c.from)], [iso(c.to)], [c.window],
    ]);
    download(`campaign-${c.id}-messages-${stamp(c.from)}-${stamp(c.to)}.csv`, csv(header, rows));
  }

  function guarded(job) {
    return () => job().catch((err) => {
      if (err instanceof ApiError && err.status === 401) askForToken("The server refused this token.");
      else showError(`The CSV could not be made: ${err.message}`);
    });
  }

  // The custom range: shown with "From … to …", filled with the range shown so far.
  function rangeChanged() {
    const custom = $("range").value === "custom";
    for (const label of document.querySelectorAll("label.custom")) label.hidden = !custom;
    if (custom && list.data && !$("from").value && !$("to").value) {
      $("from").value = formatUtc(list.data.from);
      $("to").value = formatUtc(list.data.to);
    }
    refreshNow();
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
    for (const id of ["vendor", "window"]) $(id).addEventListener("change", refreshNow);
    $("range").addEventListener("change", rangeChanged);
    for (const id of ["from", "to"]) $(id).addEventListener("change", refreshNow);
    $("list-csv").addEventListener("click", guarded(listCsv));
    $("c-csv").addEventListener("click", guarded(async () => seriesCsv()));
    $("c-messages-csv").addEventListener("click", guarded(async () => messagesCsv()));
    $("login").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token").value.trim();
      if (token) signIn(token);
    });
    $("logout").addEventListener("click", signOut);
    $("logout").hidden = !auth.token;
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
