// The llm-router console: five read-only pages over /ui/api/*. No build step; Chart.js (vendor/) draws
// the charts. Every value from the server reaches the page through textContent, never as HTML.

const KEY = "llmr-admin-key";
const POLL = { now: 1000, traffic: 5000, experiments: 5000, requests: 2000 };
const charts = new Map();  // canvas id -> Chart
let page = null;
let timer = null;
const palette = ["#1a56db", "#c5221f", "#137333", "#b06000", "#7c3aed", "#0e7490", "#be185d", "#4b5563"];

// -- small DOM helpers ----------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
const fmt = {
  n: (v) => (v === null || v === undefined ? "n/a" : Number(v).toLocaleString()),
  ms: (v) => (v === null || v === undefined ? "n/a" : `${Number(v).toFixed(v < 10 ? 2 : 0)} ms`),
  pct: (v) => (v === null || v === undefined ? "n/a" : `${(100 * v).toFixed(1)}%`),
  usd: (v) => (v === null || v === undefined ? "n/a" : `$${Number(v).toFixed(v && v < 0.01 ? 6 : 2)}`),
  time: (epoch) => (epoch ? new Date(epoch * 1000).toLocaleTimeString() : "n/a"),
  when: (epoch) => (epoch ? new Date(epoch * 1000).toLocaleString() : "n/a"),
};
const num = (v, f = fmt.n) => h("td", { class: "num" }, f(v));

// -- the API ----------------------------------------------------------------------------------------
class Refused extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.authorization = `Bearer ${key}`;
  const resp = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await resp.json(); } catch { body = null; }
  if (resp.status === 401 || resp.status === 403) {
    throw new Refused(body?.error?.message || `refused (${resp.status})`);
  }
  if (!resp.ok) throw new Error(body?.error?.message || `HTTP ${resp.status}`);
  return body;
}

function showLogin(why) {
  stop();
  document.querySelectorAll(".page").forEach((p) => { p.hidden = true; });
  $("login").hidden = false;
  $("login-why").textContent = why || "";
  $("logout").hidden = !sessionStorage.getItem(KEY);
  $("status").textContent = "refused";
}

// -- charts -----------------------------------------------------------------------------------------
function chart(parent, id, config) {
  let canvas = document.getElementById(id);
  if (!canvas) {
    canvas = h("canvas", { id, role: "img", "aria-label": config.options?.plugins?.title?.text || id });
    parent.append(h("div", { class: "chart" }, canvas));
  }
  const old = charts.get(id);
  if (old && old.canvas === canvas) {
    old.data = config.data;
    old.update("none");
    return old;
  }
  if (old) old.destroy();
  const made = new window.Chart(canvas, {
    ...config,
    options: { responsive: true, maintainAspectRatio: false, animation: false, ...config.options },
  });
  charts.set(id, made);
  return made;
}

function titled(text, extra = {}) {
  return { plugins: { title: { display: true, text }, legend: { position: "bottom" } }, ...extra };
}

function lines(labels, series, title, yTitle) {
  return {
    type: "line",
    data: {
      labels,
      datasets: Object.entries(series).map(([name, data], i) => ({
        label: name, data, borderColor: palette[i % palette.length], backgroundColor: palette[i % palette.length],
        spanGaps: true, pointRadius: 2, borderWidth: 1.5,
      })),
    },
    options: titled(title, { scales: { y: { beginAtZero: true, title: { display: !!yTitle, text: yTitle } } } }),
  };
}

// -- Now ---------------------------------------------------------------------------------------------
function circuitBadge(state) {
  const cls = { closed: "ok", half_open: "warn", open: "bad" }[state] || "muted";
  return h("span", { class: `badge ${cls}`, "data-circuit": state }, state.replace("_", "-"));
}

function usageBar(used, limit) {
  const share = limit ? Math.min(1, used / limit) : 0;
  return h("div", { class: share >= 0.9 ? "bar hot" : "bar", title: `${used} of ${limit}` },
    h("span", { style: null, "data-share": share.toFixed(3) }));
}

function renderNow(d) {
  const root = $("page-now");
  root.replaceChildren();
  const cfg = d.config;
  root.append(h("div", { class: "cards" },
    h("div", { class: "card" }, h("div", { class: "muted" }, "config version"),
      h("div", { class: "big mono", id: "config-version" }, cfg.version),
      h("div", { class: "muted" }, `loaded ${fmt.when(cfg.loaded_at)}`), h("div", { class: "muted mono" }, cfg.path)),
    h("div", { class: "card" }, h("div", { class: "muted" }, "store"),
      h("div", { class: `big ${d.store.status === "ok" ? "ok" : "bad"}`, id: "store-status" }, `${d.store.kind}: ${d.store.status}`),
      h("div", { class: "muted" }, `ping ${fmt.ms(d.store.ping_ms)}`)),
    h("div", { class: "card" }, h("div", { class: "muted" }, "async queue"),
      d.queue.error ? h("div", { class: "bad" }, d.queue.error) :
        [h("div", { class: "big" }, `${Object.values(d.queue.queued || {}).reduce((a, b) => a + b, 0)} queued, ${d.queue.running} running`),
          h("div", { class: "muted" }, `oldest ${d.queue.oldest_age === null ? "none" : `${d.queue.oldest_age.toFixed(1)} s`}; `
            + `workers here ${d.queue.workers_here.busy}/${d.queue.workers_here.total} busy (${d.queue.kind})`)]),
    h("div", { class: "card" }, h("div", { class: "muted" }, "last 5 minutes"),
      d.traffic_5m.error ? h("div", { class: "bad" }, d.traffic_5m.error) : [
        h("div", { class: "big" }, `${fmt.n(d.traffic_5m.requests)} requests`),
        h("div", { class: "muted" }, `errors ${fmt.pct(d.traffic_5m.error_rate)}, p95 ${fmt.ms(d.traffic_5m.latency_p95_ms)}, `
          + `fallbacks ${fmt.n(d.traffic_5m.fallbacks_from)}, hedges ${fmt.n(d.traffic_5m.hedges)}`)]),
  ));
  if (cfg.rejected) {
    const problems = cfg.rejected.problems || (cfg.rejected.errors || []).map((m) => ({ message: m }));
    root.append(h("div", { class: "alert", id: "rejected" },
      h("strong", {}, `Last edit rejected (${cfg.rejected.reason}, ${fmt.when(cfg.rejected.at)}); still serving ${cfg.version}`),
      h("ul", {}, problems.map((p) => h("li", {},
        p.line ? h("span", { class: "mono" }, `line ${p.line}: `) : null,
        p.location ? h("span", { class: "mono" }, `${p.location}: `) : null, p.message)))));
  }
  root.append(h("h2", {}, "Chains"));
  const table = h("table", { id: "chains" }, h("thead", {}, h("tr", {},
    ["task", "target", "circuit", "failures", "hedge after", "req 5m", "errors 5m", "fallbacks away 5m", "hedges 5m", "p95 5m"]
      .map((t, i) => h("th", { class: i > 2 ? "num" : null }, t)))));
  const body = h("tbody");
  for (const [task, t] of Object.entries(d.tasks)) {
    t.targets.forEach((r, i) => {
      body.append(h("tr", { "data-task": task, "data-target": r.target },
        h("td", {}, i === 0 ? task : "", i === 0 && t.experiment ? h("span", { class: "muted" }, ` (A/B: ${t.experiment.join(", ")})`) : null),
        h("td", { class: "mono" }, r.target, r.in_chain ? "" : h("span", { class: "muted" }, " (variant)")),
        h("td", {}, circuitBadge(r.circuit), r.open_until ? h("span", { class: "muted" }, ` until ${fmt.time(r.open_until)}`) : null),
        num(r.failures), h("td", { class: "num" }, r.hedge_after === null ? "off" : `${r.hedge_after} s`),
        num(r.requests_5m), num(r.errors_5m), num(r.fallbacks_5m), num(r.hedges_5m), num(r.latency_p95_ms_5m, fmt.ms)));
    });
  }
  table.append(body);
  root.append(table);
  root.append(h("h2", {}, "Limits in use"));
  if (d.limits.error) root.append(h("p", { class: "bad" }, d.limits.error));
  else {
    const rows = Object.entries(d.limits).flatMap(([scope, kinds]) => Object.entries(kinds).map(([kind, v]) =>
      h("tr", {}, h("td", { class: "mono" }, scope), h("td", {}, kind), num(v.used), num(v.limit), h("td", {}, usageBar(v.used, v.limit)))));
    root.append(rows.length ? h("table", {}, h("thead", {}, h("tr", {}, ["scope", "limit", "used", "per minute", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)) : h("p", { class: "muted" }, "No provider, model or tenant limits are configured."));
  }
  root.append(h("h2", {}, "Budgets"));
  renderBudgets(root, d.budgets);
  root.append(h("p", { class: "muted" }, `replica pid ${d.replica.pid}${d.replica.draining ? " (draining)" : ""}; updated ${fmt.time(d.at)}`));
  document.querySelectorAll("[data-share]").forEach((el) => { el.style.width = `${100 * Number(el.dataset.share)}%`; });
}

function renderBudgets(root, budgets) {
  if (budgets.error) { root.append(h("p", { class: "bad" }, budgets.error)); return; }
  const rows = Object.entries(budgets).flatMap(([scope, b]) => ["daily", "monthly"].filter((p) => b[p]).map((p) =>
    h("tr", {}, h("td", { class: "mono" }, scope), h("td", {}, p), num(b[p].spent_usd, fmt.usd), num(b[p].limit_usd, fmt.usd),
      h("td", {}, usageBar(b[p].spent_usd, b[p].limit_usd)), h("td", { class: "muted" }, `alert at ${fmt.pct(b.alert_at)}`))));
  root.append(rows.length ? h("table", { id: "budgets" }, h("thead", {}, h("tr", {}, ["scope", "period", "spent", "budget", "", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows)) : h("p", { class: "muted" }, "No budgets are configured."));
}

// -- Traffic and cost ---------------------------------------------------------------------------------
let trafficMinutes = 60;
let spendBy = "model";

async function renderTraffic() {
  const [t, s] = await Promise.all([api(`/ui/api/traffic?minutes=${trafficMinutes}`), api("/ui/api/spend?days=30")]);
  const root = $("page-traffic");
  if (!root.dataset.built) {
    root.dataset.built = "1";
    root.append(h("div", { class: "row" }, "window:",
      ...[15, 60, 360].map((m) => h("button", { type: "button", onclick: () => { trafficMinutes = m; refresh(); } }, m < 60 ? `${m} min` : `${m / 60} h`)),
      h("span", { class: "muted", id: "traffic-window" })),
      h("div", { class: "charts", id: "traffic-charts" }), h("h2", {}, "Per task and target"), h("div", { id: "traffic-table" }),
      h("h2", {}, "Spend per day"), h("div", { class: "row" }, "by:",
        ...["model", "task", "tenant"].map((k) => h("button", { type: "button", onclick: () => { spendBy = k; refresh(); } }, k))),
      h("div", { class: "charts", id: "spend-charts" }), h("h2", {}, "Budgets"), h("div", { id: "spend-budgets" }));
  }
  $("traffic-window").textContent = `last ${trafficMinutes} minutes, every replica`;
  const labels = t.minutes.map((m) => new Date(m * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  const pick = (k) => Object.fromEntries(Object.entries(t.series).map(([task, s2]) => [task, s2[k]]));
  const box = $("traffic-charts");
  chart(box, "chart-requests", lines(labels, pick("requests"), "Requests per minute"));
  chart(box, "chart-errors", lines(labels, { ...pick("errors") }, "Errors per minute"));
  chart(box, "chart-fallbacks", lines(labels, pick("fallbacks_from"), "Fallbacks away per minute"));
  const lat = {};
  for (const [task, s2] of Object.entries(t.series)) { lat[`${task} p50`] = s2.latency_p50_ms; lat[`${task} p95`] = s2.latency_p95_ms; }
  chart(box, "chart-latency", lines(labels, lat, "Latency p50 / p95", "ms"));
  const ttft = {};
  for (const [task, s2] of Object.entries(t.series)) { ttft[`${task} p50`] = s2.ttft_p50_ms; ttft[`${task} p95`] = s2.ttft_p95_ms; }
  chart(box, "chart-ttft", lines(labels, ttft, "Time to first token p50 / p95", "ms"));
  chart(box, "chart-cost", lines(labels, pick("cost_usd"), "Cost per minute", "USD"));
  chart(box, "chart-cache", lines(labels, pick("cache_hit_rate"), "Response-cache hit rate per minute (tasks with a cache)"));
  const cols = ["task", "target", "requests", "errors", "error rate", "fallbacks away", "hedges (won)", "retries", "trips",
    "p50", "p95", "TTFT p50", "TTFT p95", "cache hit rate", "cost", "prompt-cache savings"];
  $("traffic-table").replaceChildren(h("table", { id: "traffic-rows" }, h("thead", {}, h("tr", {}, cols.map((c, i) => h("th", { class: i > 1 ? "num" : null }, c)))),
    h("tbody", {}, t.rows.map((r) => h("tr", {}, h("td", {}, r.task), h("td", { class: "mono" }, r.target), num(r.requests), num(r.errors),
      num(r.error_rate, fmt.pct), num(r.fallbacks_from), h("td", { class: "num" }, `${r.hedges} (${r.hedges_won})`), num(r.retries), num(r.trips),
      num(r.latency_p50_ms, fmt.ms), num(r.latency_p95_ms, fmt.ms), num(r.ttft_p50_ms, fmt.ms), num(r.ttft_p95_ms, fmt.ms),
      num(r.cache_hit_rate, fmt.pct), num(r.cost_usd, fmt.usd), num(r.savings_usd, fmt.usd))))));
  // spend per day, stacked by the chosen key
  const groups = {};
  for (const r of s.rows) {
    const g = groups[r[spendBy]] || (groups[r[spendBy]] = Object.fromEntries(s.days.map((d) => [d, 0])));
    g[r.day] += r.cost_usd || 0;
  }
  chart($("spend-charts"), "chart-spend", {
    type: "bar",
    data: { labels: s.days, datasets: Object.entries(groups).map(([name, byDay], i) => ({ label: name, data: s.days.map((d) => byDay[d]),
      backgroundColor: palette[i % palette.length] })) },
    options: titled(`Spend per UTC day by ${spendBy} (USD)`, { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } }),
  });
  const saved = Object.fromEntries(s.days.map((d) => [d, 0]));
  for (const r of s.rows) saved[r.day] += r.cache_savings_usd || 0;
  chart($("spend-charts"), "chart-savings", {
    type: "bar",
    data: { labels: s.days, datasets: [{ label: "prompt-cache savings", data: s.days.map((d) => saved[d]), backgroundColor: palette[2] }] },
    options: titled("Prompt-cache savings per UTC day (USD)", { scales: { y: { beginAtZero: true } } }),
  });
  const budgets = $("spend-budgets");
  budgets.replaceChildren();
  renderBudgets(budgets, s.budgets);
  budgets.querySelectorAll("[data-share]").forEach((el) => { el.style.width = `${100 * Number(el.dataset.share)}%`; });
}

// -- Experiments ---------------------------------------------------------------------------------------
const MEASURES = [["error_rate", "error rate", fmt.pct], ["latency_ms", "latency (mean)", fmt.ms], ["ttft_ms", "TTFT (mean)", fmt.ms],
  ["cost_usd", "cost per answer", fmt.usd], ["feedback", "feedback score", (v) => (v === null ? "n/a" : v.toFixed(2))]];

function ciCell(m, f) {
  const value = m.rate !== undefined ? m.rate : m.mean;
  return h("td", { class: "num" }, f(value), m.ci95 ? h("div", { class: "muted" }, `[${f(m.ci95[0])}, ${f(m.ci95[1])}]`) : null,
    h("div", { class: "muted" }, `n = ${m.n}`));
}

function intervalChart(parent, id, title, variants, key, f) {
  const names = Object.keys(variants);
  const ranges = names.map((v) => variants[v].ci95[key]?.ci95 || null);
  const centres = names.map((v) => { const m = variants[v].ci95[key]; return m.rate !== undefined ? m.rate : m.mean; });
  chart(parent, id, {
    type: "bar",
    data: { labels: names, datasets: [
      { label: "95% interval", data: ranges, backgroundColor: "rgba(26,86,219,.25)", borderColor: palette[0], borderWidth: 1, barPercentage: 0.5 },
      { type: "line", label: "estimate", data: centres, showLine: false, pointRadius: 5, borderColor: palette[1], backgroundColor: palette[1] },
    ] },
    options: titled(title, { indexAxis: "x", scales: { y: { beginAtZero: key === "error_rate",
      ticks: { callback: (v) => f(v) } } } }),
  });
}

async function renderExperiments() {
  const d = await api("/ui/api/experiments");
  const root = $("page-experiments");
  if (!root.dataset.built) {
    root.dataset.built = "1";
    root.append(h("div", { id: "exp-list" }), h("h2", {}, "Comparison runs"), reportPicker(), h("div", { id: "report-out" }));
  }
  const list = $("exp-list");
  list.replaceChildren();
  if (!d.tasks.length) list.append(h("p", { class: "muted" }, "No task has an experiment or a shadow."));
  for (const exp of d.tasks) {
    const card = h("div", { class: "card", "data-experiment": exp.task });
    card.append(h("h2", {}, exp.task, exp.sticky_by ? h("span", { class: "muted" }, ` sticky by ${exp.sticky_by}`) : null));
    if (exp.store) card.append(h("p", { class: "bad" }, exp.store));
    const variants = exp.variants || {};
    card.append(h("table", { class: "variants" },
      h("thead", {}, h("tr", {}, h("th", {}, "variant"), h("th", {}, "chain"), h("th", { class: "num" }, "requests"),
        ...MEASURES.map(([, label]) => h("th", { class: "num" }, label)), h("th", { class: "num" }, "p50 / p95 ≤"))),
      h("tbody", {}, Object.entries(variants).map(([name, v]) => h("tr", { "data-variant": name },
        h("td", {}, name, v.weight !== undefined ? h("div", { class: "muted" }, `weight ${v.weight}`) : null),
        h("td", { class: "mono" }, (v.chain || []).join(" → ")), num(v.requests),
        ...MEASURES.map(([k, , f]) => ciCell(v.ci95[k], f)),
        h("td", { class: "num" }, `${fmt.ms(v.latency_ms.p50_le)} / ${fmt.ms(v.latency_ms.p95_le)}`))))));
    const sig = exp.significance || [];
    card.append(h("h3", {}, "Is the difference significant?"),
      h("p", { class: "muted" }, "Each measure against the first variant, at 95%, on the samples so far. Each test stands alone "
        + "(no correction for five measures or for looking again as samples arrive): a result that comes and goes is not one."));
    card.append(sig.length ? h("ul", { class: "statements" }, sig.map((s) => h("li", { class: s.significant ? "ok" : "muted",
      "data-significant": String(s.significant) }, s.statement)))
      : h("p", { class: "muted" }, "One variant only, or no samples yet: nothing to compare."));
    const charts2 = h("div", { class: "charts" });
    card.append(charts2);
    list.append(card);
    if (Object.keys(variants).length) {
      for (const [k, label, f] of MEASURES) intervalChart(charts2, `ci-${exp.task}-${k}`, `${label}: 95% intervals`, variants, k, f);
    }
    if (exp.shadow) {
      card.append(h("h3", {}, `Shadow: ${exp.shadow.target} (${fmt.pct(exp.shadow.sample)} sampled)`));
      for (const pair of (exp.shadow.recent || []).slice(0, 5)) {
        card.append(h("div", { class: "muted" }, `${pair.id}: shadow ${fmt.ms(pair.latency_ms)}${pair.error ? `, error ${pair.error}` : ""}`),
          h("div", { class: "pairs" }, h("pre", {}, pair.primary_output || "(no primary text)"), h("pre", {}, pair.output || "(no shadow text)")));
      }
    }
  }
}

function reportPicker() {
  const files = h("input", { type: "file", id: "report-files", multiple: true, accept: ".jsonl,.json" });
  const pick = h("select", { id: "report-names" }, h("option", { value: "" }, "reports directory…"));
  api("/ui/api/reports").then((r) => {
    if (r.dir === null) { pick.disabled = true; pick.title = "set LLM_ROUTER_REPORTS_DIR to open compare outputs by name"; }
    for (const x of r.reports) pick.append(h("option", { value: x.name }, x.name));
  }).catch(() => { pick.disabled = true; });
  const failed = (e) => $("report-out").replaceChildren(h("p", { class: "bad" }, e.message));
  pick.addEventListener("change", async () => {
    if (!pick.value) return;
    try { renderReport(await api(`/ui/api/report?name=${encodeURIComponent(pick.value)}`)); } catch (e) { failed(e); }
  });
  files.addEventListener("change", async () => {
    let results = null; let judgements = null;
    try {
      for (const f of files.files) {
        const text = await f.text();
        if (f.name.endsWith(".jsonl")) results = text; else judgements = JSON.parse(text);
      }
    } catch (e) { failed(new Error(`judgements.json is not JSON: ${e.message}`)); return; }
    if (results === null) { $("report-out").replaceChildren(h("p", { class: "bad" }, "choose a results.jsonl (and judgements.json)")); return; }
    try {
      renderReport(await api("/ui/api/report", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ results, judgements }) }));
    } catch (e) { failed(e); }
  });
  return h("div", { class: "row" }, "upload results.jsonl (+ judgements.json):", files, "or open:", pick);
}

function renderReport(r) {
  const out = $("report-out");
  out.replaceChildren(h("p", {}, `${r.runs} runs over ${r.targets.length} targets`));
  const box = h("div", { class: "charts" });
  out.append(box);
  const rows = r.targets.map((t) => r.per_target[t]);
  chart(box, "report-latency", { type: "bar", data: { labels: r.targets, datasets: [
    { label: "p50", data: rows.map((a) => a.latency_p50_ms), backgroundColor: palette[0] },
    { label: "p95", data: rows.map((a) => a.latency_p95_ms), backgroundColor: palette[3] }] }, options: titled("Latency (ms)") });
  chart(box, "report-cost", { type: "bar", data: { labels: r.targets, datasets: [
    { label: "total cost", data: rows.map((a) => a.total_cost_usd), backgroundColor: palette[2] }] }, options: titled("Total cost (USD)") });
  chart(box, "report-success", { type: "bar", data: { labels: r.targets, datasets: [
    { label: "success rate", data: rows.map((a) => a.success_rate), backgroundColor: palette[4] }] },
  options: titled("Success rate", { scales: { y: { min: 0, max: 1 } } }) });
  out.append(h("table", { id: "report-targets" }, h("thead", {}, h("tr", {}, ["target", "runs", "success", "schema-valid", "p50", "p95", "TTFT p50", "cost"].map((c) => h("th", {}, c)))),
    h("tbody", {}, r.targets.map((t) => { const a = r.per_target[t]; return h("tr", {}, h("td", { class: "mono" }, t), num(a.runs), num(a.success_rate, fmt.pct),
      h("td", {}, a.schema_valid || "n/a"), num(a.latency_p50_ms, fmt.ms), num(a.latency_p95_ms, fmt.ms), num(a.ttft_p50_ms, fmt.ms), num(a.total_cost_usd, fmt.usd)); }))));
  if (r.judged) {
    out.append(h("h3", {}, `Judged by ${r.judged.judge}`), h("table", {}, h("thead", {}, h("tr", {}, ["A", "B", "judged", "A win rate", "95% interval"].map((c) => h("th", {}, c)))),
      h("tbody", {}, (r.judged.pairs || []).map((p) => h("tr", {}, h("td", {}, p.a), h("td", {}, p.b), num(p.judged), num(p.a_win_rate, fmt.pct),
        h("td", {}, p.ci95 ? `${fmt.pct(p.ci95[0])} – ${fmt.pct(p.ci95[1])}` : "n/a"))))));
  }
  out.append(h("h3", {}, "Per task line"), h("table", {}, h("thead", {}, h("tr", {}, ["task", "outcome", "outputs"].map((c) => h("th", {}, c)))),
    h("tbody", {}, r.lines.map((l) => h("tr", {}, h("td", {}, l.task_id), h("td", { class: l.verdict === "agree" ? "ok" : "warn" }, l.verdict), h("td", { class: "mono" }, l.shown))))));
}

// -- Check an edit ---------------------------------------------------------------------------------------
function gutter(bad = new Set()) {
  const n = $("check-text").value.split("\n").length;
  $("check-gutter").replaceChildren(...Array.from({ length: n }, (_, i) => h("span", { class: bad.has(i + 1) ? "badline" : null }, `${i + 1}\n`)));
}

async function runCheck() {
  const out = $("check-out");
  out.replaceChildren(h("p", { class: "muted" }, "checking…"));
  let r;
  try {
    r = await api("/ui/api/check", { method: "POST", headers: { "content-type": "text/yaml" }, body: $("check-text").value });
  } catch (e) {
    if (e instanceof Refused) { showLogin(e.message); return; }
    out.replaceChildren(h("p", { class: "bad" }, e.message)); return;
  }
  gutter(new Set(r.problems.map((p) => p.line).filter(Boolean)));
  out.replaceChildren(h("h3", { id: "check-verdict", class: r.valid ? "ok" : "bad" },
    r.valid ? `Valid: version ${r.version} (live ${r.live_version})` : `${r.problems.length} problem(s): the live service would reject this edit`));
  if (r.problems.length) {
    out.append(h("ul", { id: "check-problems" }, r.problems.map((p) => h("li", { "data-line": p.line ?? "" },
      h("a", { href: "#check", onclick: (ev) => { ev.preventDefault(); jumpTo(p.line); } }, p.line ? `line ${p.line}` : "(no line)"),
      ": ", h("span", { class: "mono" }, p.location), p.location ? ": " : "", p.message))));
  }
  if (r.warnings.length) out.append(h("h3", {}, "Warnings"), h("ul", {}, r.warnings.map((w) => h("li", { class: "warn" }, w.line ? `line ${w.line}: ` : "", w.location ? `${w.location}: ` : "", w.message))));
  if (r.diff) {
    const changed = r.diff.tasks.filter((t) => t.change !== "same");
    out.append(h("h3", {}, `Against the live config: ${changed.length} task(s) change`));
    if (r.diff.providers.added.length || r.diff.providers.removed.length) {
      out.append(h("p", {}, `providers added: ${r.diff.providers.added.join(", ") || "none"}; removed: ${r.diff.providers.removed.join(", ") || "none"}`));
    }
    out.append(h("table", { id: "check-diff" }, h("thead", {}, h("tr", {}, ["task", "change", "live chain", "new chain", "what changes"].map((c) => h("th", {}, c)))),
      h("tbody", {}, r.diff.tasks.map((t) => h("tr", { "data-change": t.change }, h("td", {}, t.task),
        h("td", { class: { same: "muted", changed: "warn", added: "ok", removed: "bad" }[t.change] }, t.change),
        h("td", { class: "mono" }, t.live ? t.live.chain.join(" → ") : "—"), h("td", { class: "mono" }, t.new ? t.new.chain.join(" → ") : "—"),
        h("td", { class: "mono" }, h("ul", {}, t.changes.map((c) => h("li", {}, c))))))))); 
  }
}

function jumpTo(line) {
  if (!line) return;
  const ta = $("check-text");
  const before = ta.value.split("\n").slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
  ta.focus();
  ta.setSelectionRange(before, before);
  ta.scrollTop = (line - 3) * 18;
}

// -- Recent requests -------------------------------------------------------------------------------------
const filters = { task: "", outcome: "", target: "", q: "" };

async function renderRequests() {
  const params = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  const d = await api(`/ui/api/requests?${params}`);
  const root = $("page-requests");
  if (!root.dataset.built) {
    root.dataset.built = "1";
    const input = (k, attrs) => h("input", { ...attrs, id: `filter-${k}`, oninput: (ev) => { filters[k] = ev.target.value.trim(); refresh(); } });
    root.append(h("div", { class: "row" }, "filter:", input("task", { placeholder: "task" }),
      h("select", { id: "filter-outcome", onchange: (ev) => { filters.outcome = ev.target.value; refresh(); } },
        ["", "ok", "error", "cached"].map((o) => h("option", { value: o }, o || "any outcome"))),
      input("target", { placeholder: "provider/model" }), input("q", { placeholder: "id, caller, variant, error, trace" }),
      h("span", { class: "muted", id: "requests-count" })), h("div", { id: "requests-table" }), h("div", { id: "request-detail" }));
  }
  $("requests-count").textContent = `${d.requests.length} shown of the newest ${d.kept} kept`;
  const link = (id) => {
    if (!id) return h("span", { class: "muted" }, "not traced");
    return d.trace_url ? h("a", { href: d.trace_url.replace("{trace_id}", () => encodeURIComponent(id)), target: "_blank",
      rel: "noopener noreferrer", class: "mono" }, id.slice(0, 12))
      : h("span", { class: "mono", title: "set LLM_ROUTER_TRACE_URL to link trace ids" }, id);
  };
  const cols = ["time", "id", "task", "variant", "target", "attempts", "status", "latency", "TTFT", "tokens in / out", "cost", "trace"];
  $("requests-table").replaceChildren(h("table", { id: "requests" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, d.requests.map((r) => h("tr", { class: "pick", "data-outcome": r.outcome, onclick: () => detail(r) },
      h("td", {}, fmt.time(r.at)), h("td", { class: "mono" }, r.id), h("td", {}, r.task), h("td", {}, r.variant || ""),
      h("td", { class: "mono" }, r.target || "—"), h("td", { class: "mono" }, (r.attempts || []).join(" → ")),
      h("td", { class: r.outcome === "error" ? "bad" : r.outcome === "cached" ? "muted" : "ok" }, `${r.status} ${r.outcome}${r.error ? ` (${r.error})` : ""}`),
      num(r.latency_ms, fmt.ms), num(r.ttft_ms ?? null, fmt.ms), h("td", { class: "num" }, `${r.input_tokens || 0} / ${r.output_tokens || 0}`),
      num(r.cost_usd || 0, fmt.usd), h("td", { onclick: (ev) => ev.stopPropagation() }, link(r.trace_id)))))));
}

function detail(r) {
  const box = $("request-detail");
  box.replaceChildren(h("h3", {}, `Request ${r.id}`), h("pre", { class: "mono" }, JSON.stringify({ ...r, prompt: undefined, output: undefined }, null, 1)));
  if (r.prompt !== undefined && r.prompt !== null) box.append(h("div", { class: "pairs" }, h("pre", {}, r.prompt), h("pre", {}, r.output || "")));
}

// -- paging and polling ---------------------------------------------------------------------------------
const RENDER = {
  now: async () => renderNow(await api("/ui/api/now")),
  traffic: renderTraffic,
  experiments: renderExperiments,
  requests: renderRequests,
  check: async () => { await api("/ui/api/now"); },  // only to learn whether the key is good
};

function stop() { if (timer) { clearTimeout(timer); timer = null; } }

async function refresh() {
  stop();
  const which = page;
  try {
    await RENDER[which]();
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("status").className = "muted";
  } catch (e) {
    if (e instanceof Refused) { showLogin(e.message); return; }
    $("status").textContent = `error: ${e.message}`;
    $("status").className = "bad";
  }
  if (which === page && POLL[which] && !document.hidden) timer = setTimeout(refresh, POLL[which]);
}

function show(name) {
  page = RENDER[name] ? name : "now";
  $("login").hidden = true;
  $("logout").hidden = !sessionStorage.getItem(KEY);
  document.querySelectorAll(".page").forEach((p) => { p.hidden = p.id !== `page-${page}`; });
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  refresh();
}

function start() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("login-key").value);
    $("login-key").value = "";
    show(location.hash.slice(1));
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin("key forgotten"); });
  $("check-run").addEventListener("click", runCheck);
  $("check-text").addEventListener("input", () => gutter());
  $("check-text").addEventListener("scroll", () => { $("check-gutter").scrollTop = $("check-text").scrollTop; });
  $("check-file").addEventListener("change", async () => {
    const f = $("check-file").files[0];
    if (f) { $("check-text").value = await f.text(); gutter(); }
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && page) refresh(); });
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  gutter();
  show(location.hash.slice(1));
}

start();
