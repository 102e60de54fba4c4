"""The dashboard's one page (GET /dashboard): inline CSS and script, nothing loaded from
anywhere else, every value written with textContent (never parsed as HTML). A Python
constant rather than a data file, so every install of the package carries it."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cache-service dashboard</title>
<link rel="icon" href="data:,">
<style>
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --mute:#667085; --line:#e4e7ec;
  --hit:#12805c; --sem:#2f6fdb; --miss:#c4501b; --err:#b42318; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  background:var(--bg); color:var(--ink); }
header { display:flex; flex-wrap:wrap; gap:12px; align-items:center; padding:12px 20px;
  background:var(--card); border-bottom:1px solid var(--line); }
header h1 { font-size:17px; margin:0 12px 0 0; }
#status { color:var(--mute); font-size:12px; }
#status.bad { color:var(--err); }
form#filters { display:flex; flex-wrap:wrap; gap:8px; align-items:center; }
label { font-size:12px; color:var(--mute); display:flex; gap:4px; align-items:center; }
input, select, button { font:inherit; padding:3px 6px; border:1px solid var(--line);
  border-radius:4px; background:#fff; }
input { width:130px; }
button { cursor:pointer; }
main { padding:16px 20px; display:grid; gap:16px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px;
  padding:10px 12px; }
.card .k { font-size:12px; color:var(--mute); }
.card .v { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
section { background:var(--card); border:1px solid var(--line); border-radius:6px;
  padding:12px; overflow-x:auto; }
section h2 { font-size:14px; margin:0 0 8px; }
.row2 { display:grid; grid-template-columns:repeat(auto-fit,minmax(320px,1fr)); gap:16px; }
table { border-collapse:collapse; width:100%; font-size:12.5px;
  font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line);
  white-space:nowrap; }
th { color:var(--mute); font-weight:500; }
td.prompt { white-space:normal; max-width:360px; word-break:break-word; }
.o-exact_hit { color:var(--hit); font-weight:600; }
.o-semantic_hit { color:var(--sem); font-weight:600; }
.o-miss { color:var(--miss); }
.o-error { color:var(--err); font-weight:600; }
.empty { color:var(--mute); font-style:italic; }
.bar { background:#eef0f4; border-radius:3px; height:8px; min-width:80px; }
.bar > span { display:block; height:8px; border-radius:3px; background:var(--sem); }
.bar.over > span { background:var(--err); }
svg.spark { width:100%; height:70px; }
.mute { color:var(--mute); font-size:12px; }
</style>
</head>
<body>
<header>
  <h1>cache-service</h1>
  <form id="filters" autocomplete="off">
    <label>Range <select id="f-range" name="since">
      <option value="">all (live counters)</option>
      <option value="15m">last 15 min</option><option value="1h">last hour</option>
      <option value="24h">last 24 h</option><option value="7d">last 7 days</option>
    </select></label>
    <label>Namespace <input id="f-namespace" name="namespace" list="l-namespace"></label>
    <label>Model <input id="f-model" name="model" list="l-model"></label>
    <label>Project <input id="f-project" name="project" list="l-project"></label>
    <button type="submit" id="apply">Apply</button>
    <button type="button" id="clear">Clear</button>
    <label>Admin key <input id="f-key" type="password" placeholder="(optional)"></label>
    <label>Every <select id="f-every">
      <option value="2000">2 s</option><option value="5000" selected>5 s</option>
      <option value="15000">15 s</option><option value="0">paused</option>
    </select></label>
  </form>
  <span id="status">loading…</span>
  <datalist id="l-namespace"></datalist><datalist id="l-model"></datalist>
  <datalist id="l-project"></datalist>
</header>
<main>
  <div class="cards" id="cards"></div>
  <div class="row2">
    <section><h2>Hit rate over time <span class="mute" id="span-hit"></span></h2>
      <svg class="spark" id="spark-hit" viewBox="0 0 300 70" preserveAspectRatio="none"></svg>
    </section>
    <section><h2>Dollars saved, cumulative <span class="mute" id="span-saved"></span></h2>
      <svg class="spark" id="spark-saved" viewBox="0 0 300 70" preserveAspectRatio="none"></svg>
    </section>
  </div>
  <div class="row2">
    <section><h2>Cache entries over time <span class="mute" id="span-size"></span></h2>
      <svg class="spark" id="spark-size" viewBox="0 0 300 70" preserveAspectRatio="none"></svg>
      <p class="mute">After each sweep, since the server started (kept in memory, not
        across restarts); the whole store, whatever the namespace and model filters.</p>
    </section>
    <section><h2>Evictions, cumulative <span class="mute" id="span-evicted"></span></h2>
      <svg class="spark" id="spark-evicted" viewBox="0 0 300 70"
        preserveAspectRatio="none"></svg>
      <p class="mute">Entries the store dropped for space (its size limit): a cache too
        small for its traffic loses hits this way.</p>
    </section>
  </div>
  <div class="row2">
    <section><h2>Miss reasons</h2><div id="miss-reasons"></div></section>
    <section><h2>Top entries</h2><div id="top-entries"></div></section>
  </div>
  <div class="row2">
    <section><h2>Quality</h2><div id="quality"></div></section>
    <section><h2>Cache</h2><div id="cache"></div></section>
  </div>
  <section><h2>Budgets and quota windows</h2><div id="quota"></div></section>
  <section><h2>By namespace and model</h2><div id="breakdown"></div></section>
  <section><h2>Recent requests</h2><div id="recent"></div></section>
</main>
<script>
"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var timer = null;
  var keyStore = window.sessionStorage;
  $("f-key").value = keyStore.getItem("cache-admin-key") || "";

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); }); }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function num(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }
  function usd(n) {
    if (n === null || n === undefined) { return "–"; }
    var v = Number(n);
    return "$" + (Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(6));
  }
  function pct(r) { return (r * 100).toFixed(1) + "%"; }
  function dur(ms) {
    if (ms === null || ms === undefined) { return "–"; }
    var s = Number(ms) / 1000;
    if (s < 1) { return Math.round(ms) + " ms"; }
    if (s < 60) { return s.toFixed(1) + " s"; }
    if (s < 3600) {
      return Math.floor(s / 60) + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    }
    return Math.floor(s / 3600).toLocaleString("en-US") + " h " +
      String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  function bytes(n) {
    if (n === null || n === undefined) { return ""; }
    var units = ["B", "KB", "MB", "GB", "TB"], v = Number(n), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
  }
  function sim(s) { return s === null || s === undefined ? "" : Number(s).toFixed(4); }
  function when(t) {
    return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "";
  }

  function filters() {
    var f = {};
    [["since", "f-range"], ["namespace", "f-namespace"], ["model", "f-model"],
     ["project", "f-project"]].forEach(function (p) {
      var v = $(p[1]).value.trim();
      if (v) { f[p[0]] = v; }
    });
    return f;
  }
  function query(extra) {
    var f = filters(), q = new URLSearchParams();
    Object.keys(f).forEach(function (k) { q.set(k, f[k]); });
    Object.keys(extra || {}).forEach(function (k) { q.set(k, extra[k]); });
    var s = q.toString();
    return s ? "?" + s : "";
  }
  function get(path) {
    var headers = { "Accept": "application/json" }, key = $("f-key").value;
    if (key) { headers["X-Admin-Key"] = key; }
    return fetch(path, { headers: headers, cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          if (!r.ok) {
            var msg = body && body.error && body.error.message ? body.error.message : r.statusText;
            throw new Error(path.split("?")[0] + ": " + r.status + " " + msg);
          }
          return body;
        });
      });
  }
  function table(cols, rows, id) {
    if (!rows.length) { return el("p", { "class": "empty" }, "nothing yet"); }
    var t = el("table", id ? { id: id } : null), tr = el("tr");
    cols.forEach(function (c) { tr.appendChild(el("th", null, c[0])); });
    t.appendChild(el("thead")).appendChild(tr);
    var body = el("tbody");
    rows.forEach(function (r) {
      var row = el("tr");
      cols.forEach(function (c) {
        var v = c[1](r), td = el("td", c[2] ? c[2](r) : null);
        if (v instanceof Node) { td.appendChild(v); } else { td.textContent = v; }
        row.appendChild(td);
      });
      body.appendChild(row);
    });
    t.appendChild(body);
    return t;
  }
  function put(id, node) { var c = $(id); c.replaceChildren(node); }

  var CARDS = [
    ["requests", "Requests", num], ["hit_rate", "Hit rate", pct],
    ["exact_hits", "Exact hits", num], ["semantic_hits", "Semantic hits", num],
    ["misses", "Misses", num], ["bypasses", "Bypasses", num], ["errors", "Errors", num],
    ["tokens_saved", "Tokens saved", num], ["dollars_saved", "Dollars saved", usd],
    ["dollars_spent", "Dollars spent", usd], ["time_saved_ms", "Time saved (est.)", dur]
  ];
  // Why the figure is an estimate and what it leaves out, on the card itself.
  var TIME_SAVED_HOW = "Estimated: for each hit, the median latency of the last 200 " +
    "misses of the same model minus the hit's own latency (never below 0), summed. Hits " +
    "of a model with no miss seen yet count nothing: ";
  function showStats(s) {
    var t = s.total;
    t.tokens_saved = t.prompt_tokens_saved + t.completion_tokens_saved;
    var cards = document.createDocumentFragment();
    CARDS.forEach(function (c) {
      var card = el("div", { "class": "card", id: "card-" + c[0] });
      if (c[0] === "time_saved_ms") {
        card.setAttribute("title", TIME_SAVED_HOW + num(t.hits_unestimated) + " so far.");
      }
      card.appendChild(el("div", { "class": "k" }, c[1]));
      card.appendChild(el("div", { "class": "v", "data-value": String(t[c[0]]) }, c[2](t[c[0]])));
      cards.appendChild(card);
    });
    put("cards", cards);
    var cols = [
      ["namespace", function (r) { return r.namespace; }],
      ["model", function (r) { return r.model; }],
      ["requests", function (r) { return num(r.requests); }],
      ["hit rate", function (r) { return pct(r.hit_rate); }],
      ["exact", function (r) { return num(r.exact_hits); }],
      ["semantic", function (r) { return num(r.semantic_hits); }],
      ["misses", function (r) { return num(r.misses); }],
      ["saved", function (r) { return usd(r.dollars_saved); }],
      ["spent", function (r) { return usd(r.dollars_spent); }],
      ["time saved", function (r) { return dur(r.time_saved_ms); }]
    ];
    put("breakdown", table(cols, s.by_namespace_model || [], "breakdown-table"));
    fillList("l-namespace", Object.keys(s.by_namespace || {}));
    fillList("l-model", Object.keys(s.by_model || {}));
    showQuality(s.quality || {});
    showCache(s.cache || {});
    showSizes(s.size_history);
  }
  function showSizes(h) {
    var samples = h ? h.samples : [], last = samples[samples.length - 1];
    spark("spark-size", samples.map(function (x) { return x.entries; }), null);
    spark("spark-evicted", samples.map(function (x) { return x.evicted; }), null, "#b42318");
    var size = $("span-size"), evicted = $("span-evicted");
    size.textContent = last
      ? "(" + num(last.entries) + " now" +
        (last.store_bytes === null ? "" : ", " + bytes(last.store_bytes)) + ")"
      : "(no sweep yet)";
    size.setAttribute("data-entries", last ? String(last.entries) : "");
    size.setAttribute("data-samples", String(samples.length));
    evicted.textContent = h ? "(" + num(h.evicted_in_range) + " in range)" : "";
    evicted.setAttribute("data-evicted", h ? String(h.evicted_in_range) : "");
  }
  function fillList(id, values) {
    var list = $(id), have = {};
    Array.prototype.forEach.call(list.children, function (o) { have[o.value] = true; });
    values.forEach(function (v) {
      if (!have[v]) { list.appendChild(el("option", { value: v })); }
    });
  }
  function spark(id, values, top, color) {
    var svg = $(id), ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    if (!values.length) { return; }
    if (values.length === 1) { values = [values[0], values[0]]; }
    var max = top || Math.max.apply(null, values) || 1, pts = [];
    values.forEach(function (v, i) {
      pts.push((i * 300 / (values.length - 1)).toFixed(1) + "," + (68 - (v / max) * 64).toFixed(1));
    });
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color || "#2f6fdb");
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
  }
  function kv(pairs) {
    var rows = pairs.filter(function (p) { return p[1] !== undefined; });
    return table([["", function (p) { return p[0]; }], ["", function (p) { return p[1]; }]], rows);
  }
  function showQuality(q) {
    var pairs = [], audit = q.audit || {};
    Object.keys(audit).forEach(function (k) {
      pairs.push(["audit " + k, JSON.stringify(audit[k])]);
    });
    Object.keys(q.feedback || {}).forEach(function (k) {
      pairs.push(["feedback " + k, JSON.stringify(q.feedback[k])]);
    });
    Object.keys(q.learned_thresholds || {}).forEach(function (k) {
      pairs.push(["learned threshold " + k, sim(q.learned_thresholds[k])]);
    });
    put("quality", kv(pairs));
  }
  function showCache(c) {
    put("cache", kv(Object.keys(c).map(function (k) {
      var v = c[k];
      return [k, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)];
    })));
  }
  function bar(used, limit) {
    var b = el("div", { "class": "bar" + (limit && used >= limit ? " over" : "") });
    var w = limit ? Math.min(100, (used / limit) * 100) : 0;
    b.appendChild(el("span", { style: "width:" + w.toFixed(1) + "%" }));
    return b;
  }
  function showQuota(q) {
    var rows = [];
    (q.scopes || []).forEach(function (s) {
      var project = $("f-project").value.trim();
      if (project && s.kind === "project" && s.name !== project) { return; }
      if (s.kind === "project") { fillList("l-project", [s.name]); }
      [["rpm", s.requests, num], ["tpm", s.tokens, num], ["requests/day", s.daily_requests, num],
       ["tokens/day", s.daily_tokens, num], ["budget/day", s.daily_budget, usd],
       ["budget/month", s.monthly_budget, usd]].forEach(function (w) {
        if (!w[1]) { return; }
        rows.push({ scope: s.kind + " " + s.name, window: w[0], used: w[1].used,
          limit: w[1].limit, remaining: w[1].remaining, reset_at: w[1].reset_at, fmt: w[2] });
      });
    });
    // Request and token windows only where limited; budgets always (dollars spent).
    rows = rows.filter(function (r) {
      return r.limit !== null || r.window.indexOf("budget") === 0;
    });
    put("quota", table([
      ["scope", function (r) { return r.scope; }], ["window", function (r) { return r.window; }],
      ["used", function (r) { return r.fmt(r.used); }],
      ["limit", function (r) { return r.limit === null ? "none" : r.fmt(r.limit); }],
      ["", function (r) { return bar(r.used, r.limit); }],
      ["remaining", function (r) { return r.remaining === null ? "" : r.fmt(r.remaining); }],
      ["resets", function (r) { return when(r.reset_at); }]
    ], rows, "quota-table"));
  }
  function showSeries(series) {
    var saved = 0, cumulative = series.map(function (b) { return (saved += b.dollars_saved); });
    spark("spark-hit", series.map(function (b) { return b.hit_rate; }), 1);
    spark("spark-saved", cumulative, null);
    var span = series.length
      ? "(" + when(series[0].time) + " to " + when(series[series.length - 1].time) + ")" : "";
    $("span-hit").textContent = span;
    $("span-saved").textContent = series.length ? "(" + usd(saved) + ")" : "";
  }
  function showRecent(r) {
    showSeries(r.series || []);
    var reasons = Object.keys(r.miss_reasons || {}).map(function (k) {
      return { reason: k, n: r.miss_reasons[k] };
    });
    put("miss-reasons", table([["reason", function (x) { return x.reason; }],
      ["misses", function (x) { return num(x.n); }]], reasons, "miss-reasons-table"));
    put("top-entries", table([
      ["entry", function (x) { return x.entry_id; }],
      ["hits", function (x) { return num(x.hits); }],
      ["saved", function (x) { return usd(x.dollars_saved); }],
      ["namespace", function (x) { return x.namespace; }],
      ["model", function (x) { return x.model; }],
      ["last hit", function (x) { return when(x.last_hit); }]
    ], r.top_entries || [], "top-entries-table"));
    var cols = [
      ["time", function (x) { return when(x.time); }],
      ["outcome", function (x) { return x.outcome; },
        function (x) { return { "class": "o-" + x.outcome }; }],
      ["namespace", function (x) { return x.namespace; }],
      ["project", function (x) { return x.project; }],
      ["model", function (x) { return x.model; }],
      ["similarity", function (x) { return sim(x.similarity); }],
      ["best rejected", function (x) { return sim(x.best_rejected); }],
      ["rejected by", function (x) { return x.rejected_by || ""; }],
      ["entry", function (x) { return x.entry_id || ""; }],
      ["latency ms", function (x) { return Number(x.latency_ms).toFixed(1); }],
      ["cost", function (x) { return x.dollars_spent ? usd(x.dollars_spent) : ""; }],
      ["saved", function (x) { return x.dollars_saved ? usd(x.dollars_saved) : ""; }]
    ];
    if (r.log_prompts) {
      cols.push(["prompt", function (x) { return x.prompt || ""; },
        function () { return { "class": "prompt" }; }]);
    }
    put("recent", table(cols, r.requests || [], "recent-table"));
  }

  function refresh() {
    var key = JSON.stringify(filters());
    var status = $("status");
    var jobs = [
      get("/v1/cache/stats" + query()).then(showStats),
      get("/v1/quota").then(showQuota),
      get("/v1/cache/recent" + query({ limit: 50 })).then(showRecent)
    ];
    return Promise.allSettled(jobs).then(function (results) {
      var failed = results.filter(function (x) { return x.status === "rejected"; });
      status.className = failed.length ? "bad" : "";
      status.textContent = failed.length
        ? failed.map(function (x) { return x.reason.message; }).join("; ")
        : "updated " + new Date().toLocaleTimeString();
      document.body.setAttribute("data-refreshed", String(Date.now()));
      document.body.setAttribute("data-filters", key);
    });
  }
  function schedule() {
    if (timer) { clearInterval(timer); timer = null; }
    var every = Number($("f-every").value);
    if (every > 0) { timer = setInterval(refresh, every); }
  }
  $("filters").addEventListener("submit", function (e) { e.preventDefault(); refresh(); });
  $("f-range").addEventListener("change", refresh);
  $("f-every").addEventListener("change", schedule);
  $("f-key").addEventListener("change", function () {
    keyStore.setItem("cache-admin-key", $("f-key").value);
    refresh();
  });
  $("clear").addEventListener("click", function () {
    ["f-range", "f-namespace", "f-model", "f-project"].forEach(function (id) { $(id).value = ""; });
    refresh();
  });
  refresh();
  schedule();
})();
</script>
</body>
</html>
"""
