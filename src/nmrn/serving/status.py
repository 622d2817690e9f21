"""The live status page (``GET /``): one self-contained HTML page that polls ``/status.json``.

Nothing is fetched from elsewhere and no library is loaded: the page is this string, its script
reads :meth:`~nmrn.serving.service.LiveService.status` every two seconds and fills in the
figures an operator watches — events per second, read latency, the apply lag, the age of the
last checkpoint, and the service's **live quality**: the moving Hits@10 and NDCG@10 of incoming
events against the recommendations their users would have got just before
(:mod:`nmrn.serving.quality`), with a small chart of its recent history.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nmrn live</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2330; background: #f6f7f9; }
  h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
  .sub { color: #5b6476; margin-bottom: 1.2rem; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr));
          gap: .8rem; max-width: 1000px; }
  .card { background: #fff; border-radius: 8px; padding: .8rem 1rem;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
  .label { color: #5b6476; font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
  .value { font-size: 1.6rem; font-weight: 600; margin-top: .2rem; }
  .note { color: #5b6476; font-size: .8rem; }
  .bad { color: #b3261e; }
  svg { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
        margin-top: 1rem; max-width: 1000px; width: 100%; height: 160px; }
</style>
</head>
<body>
<h1>nmrn live: <span id="model">…</span></h1>
<div class="sub">writer <span id="writer">…</span> · <span id="users">…</span> users ·
  <span id="items">…</span> items · up <span id="uptime">…</span></div>
<div class="grid">
  <div class="card"><div class="label">events / s (10 s)</div>
    <div class="value" id="rate">…</div></div>
  <div class="card"><div class="label">apply lag (events)</div>
    <div class="value" id="lag">…</div></div>
  <div class="card"><div class="label">read latency p50 / p99</div>
    <div class="value" id="latency">…</div><div class="note" id="reads"></div></div>
  <div class="card"><div class="label">last checkpoint</div>
    <div class="value" id="checkpoint">…</div><div class="note" id="checkpoint_seq"></div></div>
  <div class="card"><div class="label">live Hits@10</div>
    <div class="value" id="hits">…</div><div class="note" id="quality_n"></div></div>
  <div class="card"><div class="label">live NDCG@10</div>
    <div class="value" id="ndcg">…</div></div>
</div>
<svg id="chart" viewBox="0 0 1000 160" preserveAspectRatio="none"
     aria-label="live Hits@10 over the last minutes"></svg>
<div class="note">Live quality: each incoming event (a sample) is ranked against the top 10
the service would have recommended to its user just before learning it. The chart shows the
moving Hits@10 over the last polls.</div>
<script>
"use strict";
const history = [];
function fmt(x, digits) { return x === null || x === undefined ? "–" : x.toFixed(digits); }
function ago(s) {
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}
function set(id, text, bad) {
  const el = document.getElementById(id);
  el.textContent = text;
  el.classList.toggle("bad", Boolean(bad));
}
function draw() {
  const svg = document.getElementById("chart");
  const points = history.filter(v => v !== null);
  if (points.length < 2) { svg.innerHTML = ""; return; }
  const top = Math.max(0.05, ...points) * 1.1;
  const step = 1000 / Math.max(1, history.length - 1);
  const path = history.map((v, i) => v === null ? null :
    (i * step).toFixed(1) + "," + (155 - 150 * v / top).toFixed(1)).filter(p => p);
  svg.innerHTML = '<polyline fill="none" stroke="#2962c4" stroke-width="2" points="' +
    path.join(" ") + '"/>';
}
async function poll() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    const s = await r.json();
    set("model", s.model);
    set("writer", s.writer, s.writer !== "running");
    set("users", s.users.toLocaleString());
    set("items", s.items.toLocaleString());
    set("uptime", ago(s.uptime_s).replace(" ago", ""));
    set("rate", fmt(s.events_per_s, 1));
    set("lag", s.apply_lag.toLocaleString(), s.apply_lag > 10000);
    set("latency", fmt(s.read_ms.p50, 2) + " / " + fmt(s.read_ms.p99, 2) + " ms");
    set("reads", "over the last " + s.read_ms.reads + " reads");
    set("checkpoint", s.checkpoints_written ? ago(s.checkpoint_age_s) : "none since start");
    set("checkpoint_seq", (s.checkpoints_written ? "" : "loaded one: ") + "up to event " +
        s.checkpoint_seq);
    const q = s.live_quality;
    set("hits", fmt(q.hits, 3));
    set("ndcg", fmt(q.ndcg, 3));
    set("quality_n", q.events + " recent of " + q.total + " ranked events");
    history.push(q.hits);
    if (history.length > 300) history.shift();
    draw();
  } catch (err) {
    set("writer", "unreachable", true);
  }
}
poll();
setInterval(poll, 2000);
</script>
</body>
</html>
"""
