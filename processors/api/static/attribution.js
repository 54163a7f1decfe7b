// crm-stream web view: the cross-vendor attribution table (GET /api/attribution), under the
// campaign list. Its own file and section: the list and campaign views are app.js's.
//
// As in app.js, every number carries data-field / data-value (the API's value, unformatted), so
// a test can compare the page with the API without parsing formatted text.
(() => {
  "use strict";

  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.min(60000, Math.max(250, Number(params.get("refresh")) || 2000));
  const TOKEN_KEY = "crm-stream-api-token"; // app.js keeps the token there (this tab only)
  const $ = (id) => document.getElementById(id);
  const intFmt = new Intl.NumberFormat("en-US");
  const COLUMNS = [
    ["vendor", "text"], ["app_id", "text"], ["campaign_id", "text"], ["campaign_name", "text"],
    ["conversions", "int"], ["control_conversions", "int"], ["value", "money"],
    ["control_value", "money"],
  ];
  const MISSED = [
    ["name", "text"], ["conversions", "int"], ["no_exposure", "int"], ["outside_window", "int"],
  ];
  const names = new Set();
  let timer = null;

  function money(sums) {
    const parts = Object.entries(sums || {}).map(
      ([cur, v]) => `${cur || "(no currency)"} ${v.toLocaleString("en-US", { maximumFractionDigits: 2 })}`);
    return parts.length ? parts.join(", ") : "—";
  }

  function cell(field, type, v) {
    const td = document.createElement("td");
    td.dataset.field = field;
    if (type === "int") {
      td.dataset.value = String(v);
      td.textContent = intFmt.format(v);
      td.className = "num";
    } else if (type === "money") {
      td.dataset.value = JSON.stringify(v || {});
      td.textContent = money(v);
      td.className = "num";
    } else {
      td.textContent = v === null || v === undefined ? "—" : String(v);
    }
    return td;
  }

  function render(body) {
    const section = $("attribution-view");
    section.dataset.from = body.from;
    section.dataset.to = body.to;
    const tbody = $("attribution").querySelector("tbody");
    const rows = body.campaigns.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.vendor = r.vendor;
      tr.dataset.campaignId = r.campaign_id;
      tr.dataset.appId = r.app_id || "";
      for (const [field, type] of COLUMNS) tr.append(cell(field, type, r[field]));
      for (const name of Object.keys(r.names)) names.add(name);
      return tr;
    });
    tbody.replaceChildren(...rows);
    $("attribution").dataset.rows = String(rows.length);
    const totals = $("attr-totals");
    totals.dataset.conversions = body.conversions;
    totals.dataset.controlConversions = body.control_conversions;
    totals.textContent = `${intFmt.format(body.conversions)} conversions credited to a message, ` +
      `${intFmt.format(body.control_conversions)} to a holdout (control) group`;
    $("attr-empty").hidden = rows.length > 0;
    const missed = (body.unattributed || []).map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.name = r.name;
      for (const [field, type] of MISSED) tr.append(cell(field, type, r[field]));
      names.add(r.name);
      return tr;
    });
    $("attr-unattributed").querySelector("tbody").replaceChildren(...missed);
    $("attr-unattributed").dataset.rows = String(missed.length);
    totals.dataset.unattributed = body.unattributed_conversions;
    totals.textContent += `; ${intFmt.format(body.unattributed_conversions)} to no campaign`;
    const select = $("attr-name");
    const have = new Set([...select.options].map((o) => o.value));
    for (const name of [...names].sort()) {
      if (!have.has(name)) select.append(new Option(name, name));
    }
    const from = new Date(body.from).toISOString().slice(0, 16).replace("T", " ");
    const to = new Date(body.to).toISOString().slice(0, 16).replace("T", " ");
    $("attr-range").textContent = `conversions from ${from} to ${to} UTC`;
  }

  async function tick() {
    clearTimeout(timer);
    try {
      const section = $("attribution-view");
      if ($("list-view").hidden) {
        section.hidden = true;
        return;
      }
      // Every hour held (CRM_ATTRIBUTION_RETENTION bounds it), up to the end of this one.
      const query = new URLSearchParams({ from: "0" });
      if ($("attr-name").value) query.set("name", $("attr-name").value);
      const token = sessionStorage.getItem(TOKEN_KEY) || "";
      const response = await fetch(`api/attribution?${query}`, {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        cache: "no-store",
      });
      if (!response.ok) return; // 401 (app.js asks for the token), 503 (moving): next tick
      const body = await response.json();
      section.hidden = !body.enabled;
      section.dataset.enabled = String(body.enabled);
      if (body.enabled) render(body);
    } catch (err) {
      // The server is away (restarting): app.js says so; try again at the next tick.
    } finally {
      timer = setTimeout(tick, REFRESH_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("attr-name").addEventListener("change", tick);
    $("attr-controls").addEventListener("submit", (e) => e.preventDefault());
    tick();
  });
})();
