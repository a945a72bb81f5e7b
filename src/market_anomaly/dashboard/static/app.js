// The dashboard page: polls the JSON API every 2 s and draws candles on a <canvas> (no libraries:
// the page must work without internet). Anomaly markers are also DOM elements (.anomaly-marker
// with data-* attributes) so they carry a hover title and tests can find them.
"use strict";

const REFRESH_MS = 2000;
const MINUTE_MS = 60000;
const CONFIDENCE_COLOURS = { HIGH: "#ff1744", MEDIUM: "#ff9100", LOW: "#ffd600", NONE: "#ffd600" };
const $ = (id) => document.getElementById(id);

const state = { symbol: decodeURIComponent(location.hash.slice(1)) || null, candles: [], layout: null };

// -- formatting -----------------------------------------------------------------------------------

function utc(ms, withDate = true) {
  if (ms === null || ms === undefined) return "–";
  const iso = new Date(ms).toISOString();
  return withDate ? `${iso.slice(0, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
}

function price(value) {
  if (value === null || value === undefined) return "–";
  const digits = Math.abs(value) >= 100 ? 2 : Math.abs(value) >= 1 ? 4 : 6;
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function signed(value) {
  return value === null || value === undefined ? "–" : (value >= 0 ? "+" : "") + value.toFixed(2);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fillTable(tbody, rows, render, emptyText) {
  tbody.replaceChildren();
  if (!rows.length) {
    const td = tbody.insertRow().insertCell();
    td.colSpan = tbody.closest("table").tHead.rows[0].cells.length;
    td.className = "empty";
    td.textContent = emptyText;
    return;
  }
  for (const item of rows) render(tbody.insertRow(), item);
}

// -- data -----------------------------------------------------------------------------------------

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${await response.text()}`);
  return response.json();
}

function filterQuery() {
  const form = new FormData($("filters"));
  const params = new URLSearchParams({ limit: "200" });
  for (const [key, value] of form) {
    if (!value) continue;
    // datetime-local has no zone: the labels say UTC, so send it as UTC.
    params.set(key, key === "since" || key === "until" ? value + "Z" : value);
  }
  return params.toString();
}

function updateSymbols(symbols, newestAnomaly) {
  const chartSelect = $("symbol");
  const filterSelect = $("filters").elements.symbol;
  // Without a choice (or #SYMBOL in the address), show where the latest anomaly happened.
  if (!state.symbol || !symbols.includes(state.symbol)) {
    state.symbol = newestAnomaly && symbols.includes(newestAnomaly.symbol) ? newestAnomaly.symbol : symbols[0] || null;
  }
  const known = [...chartSelect.options].map((o) => o.value);
  if (known.join() !== symbols.join()) {
    chartSelect.replaceChildren(...symbols.map((s) => new Option(s, s)));
    const chosen = filterSelect.value;
    filterSelect.replaceChildren(new Option("all", ""), ...symbols.map((s) => new Option(s, s)));
    filterSelect.value = chosen;
  }
  if (state.symbol) chartSelect.value = state.symbol;
}

async function refresh() {
  try {
    const [{ symbols }, newest] = await Promise.all([
      getJSON("/api/symbols"),
      state.symbol ? Promise.resolve({ anomalies: [] }) : getJSON("/api/anomalies?limit=1"),
    ]);
    updateSymbols(symbols, newest.anomalies[0]);
    const minutes = $("minutes").value;
    const [candles, anomalies, health] = await Promise.all([
      state.symbol ? getJSON(`/api/candles?symbol=${encodeURIComponent(state.symbol)}&minutes=${minutes}`)
                   : Promise.resolve({ candles: [] }),
      getJSON(`/api/anomalies?${filterQuery()}`),
      getJSON("/api/health"),
    ]);
    state.candles = candles.candles;
    drawChart();
    renderAnomalies(anomalies.anomalies);
    renderHealth(health);
    $("status").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    $("status").classList.remove("stale");
  } catch (error) {
    $("status").textContent = `update failed: ${error.message}`;
    $("status").classList.add("stale");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

// -- anomalies table and health panel -------------------------------------------------------------

function renderAnomalies(rows) {
  fillTable($("anomalies"), rows, (row, a) => {
    cell(row, utc(a.open_time));
    cell(row, a.symbol);
    cell(row, price(a.close), "num");
    cell(row, signed(a.return_pct), "num");
    cell(row, a.votes ?? "–", "num");
    cell(row, a.confidence, `conf-${a.confidence}`);
    cell(row, a.reasons || "–", "reasons");
    row.dataset.symbol = a.symbol;
    row.addEventListener("click", () => selectSymbol(a.symbol));
  }, "no anomalies match the filters");
}

function renderHealth(health) {
  $("candles-per-second").textContent = health.candles_per_second.toFixed(2);
  $("totals").textContent = `${health.decisions.toLocaleString()} / ${health.anomalies.toLocaleString()}`;
  const p = health.progress;
  $("last-batch").textContent = p
    ? `#${p.batch_id}: ${p.input_rows} rows, ${(p.processed_rows_per_second ?? 0).toFixed(1)} rows/s, ` +
      `${p.batch_duration_ms} ms, at ${utc(p.at).slice(11)} UTC`
    : "the job has not reported yet";

  const kafka = health.kafka;
  $("lag-topic").textContent = `(${kafka.candles_topic})`;
  fillTable($("lag"), kafka.lag, (row, l) => {
    cell(row, l.partition);
    cell(row, l.end_offset ?? "–", "num");
    cell(row, l.high, "num");
    cell(row, l.lag ?? "–", "num");
  }, kafka.enabled ? "waiting for Kafka" : "Kafka not queried (--no-kafka)");
  fillTable($("topics"), Object.entries(kafka.topics), (row, [topic, t]) => {
    cell(row, topic);
    cell(row, t.messages.toLocaleString(), "num");
  }, kafka.enabled ? "waiting for Kafka" : "Kafka not queried (--no-kafka)");
  $("kafka-error").hidden = !kafka.error;
  $("kafka-error").textContent = kafka.error ? `Kafka: ${kafka.error}` : "";

  fillTable($("last-candles"), health.last_candles, (row, c) => {
    cell(row, c.symbol);
    cell(row, utc(c.open_time));
    cell(row, price(c.close), "num");
    cell(row, c.is_anomaly ? `ANOMALY ${c.confidence}` : "normal", c.is_anomaly ? `conf-${c.confidence}` : "");
  }, "no candles yet");
}

// -- the candlestick chart ------------------------------------------------------------------------

function ohlc(candles) {
  // Decisions without open/high/low (older jobs) are drawn from closes: open = previous close.
  let previousClose = null;
  return candles.map((c) => {
    const open = c.open ?? previousClose ?? c.close;
    const high = c.high ?? Math.max(open, c.close);
    const low = c.low ?? Math.min(open, c.close);
    previousClose = c.close;
    return { ...c, open, high, low };
  });
}

function niceTicks(min, max, count) {
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max; v += step) ticks.push(v);
  return ticks;
}

function drawChart() {
  const canvas = $("chart");
  const wrap = $("chart-wrap");
  const ratio = window.devicePixelRatio || 1;
  const width = wrap.clientWidth;
  const height = wrap.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";

  const candles = ohlc(state.candles);
  const markers = $("markers");
  markers.replaceChildren();
  canvas.dataset.candles = String(candles.length);
  if (!candles.length) {
    ctx.fillStyle = "#8393a7";
    ctx.fillText(state.symbol ? `no decisions for ${state.symbol} yet` : "waiting for the detect job…", 20, 30);
    $("chart-summary").textContent = "";
    state.layout = null;
    return;
  }

  const pad = { left: 8, right: 78, top: 24, bottom: 22 };
  const volumeHeight = (height - pad.top - pad.bottom) * 0.18;
  const priceBottom = height - pad.bottom - volumeHeight - 6;
  const first = candles[0].open_time;
  const last = candles[candles.length - 1].open_time;
  const span = Math.max(last - first, MINUTE_MS) + MINUTE_MS;
  const plotWidth = width - pad.left - pad.right;
  const x = (t) => pad.left + ((t - first + MINUTE_MS / 2) / span) * plotWidth;
  let low = Math.min(...candles.map((c) => c.low));
  let high = Math.max(...candles.map((c) => c.high));
  if (high === low) { high += Math.abs(high) * 0.001 || 1; low -= Math.abs(low) * 0.001 || 1; }
  const margin = (high - low) * 0.06;
  low -= margin; high += margin;
  const y = (v) => pad.top + ((high - v) / (high - low)) * (priceBottom - pad.top);
  const maxVolume = Math.max(...candles.map((c) => c.volume || 0)) || 1;
  const bodyWidth = Math.max(1, Math.min(14, (plotWidth / (span / MINUTE_MS)) * 0.7));

  // Grid and price axis.
  ctx.strokeStyle = "#263142";
  ctx.fillStyle = "#8393a7";
  ctx.lineWidth = 1;
  for (const tick of niceTicks(low, high, 6)) {
    ctx.beginPath();
    ctx.moveTo(pad.left, Math.round(y(tick)) + 0.5);
    ctx.lineTo(width - pad.right, Math.round(y(tick)) + 0.5);
    ctx.stroke();
    ctx.fillText(price(tick), width - pad.right + 6, y(tick) + 4);
  }
  // Time axis: about one label per 110 px, on whole minutes.
  const labelEvery = Math.max(1, Math.ceil((span / MINUTE_MS) / (plotWidth / 110)));
  for (let t = first; t <= last; t += labelEvery * MINUTE_MS) {
    ctx.fillText(utc(t, false), Math.max(pad.left, x(t) - 14), height - 6);
  }

  for (const c of candles) {
    const cx = x(c.open_time);
    const up = c.close >= c.open;
    const colour = up ? "#26a69a" : "#ef5350";
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.beginPath();
    ctx.moveTo(Math.round(cx) + 0.5, y(c.high));
    ctx.lineTo(Math.round(cx) + 0.5, y(c.low));
    ctx.stroke();
    const top = y(Math.max(c.open, c.close));
    ctx.fillRect(cx - bodyWidth / 2, top, bodyWidth, Math.max(1, y(Math.min(c.open, c.close)) - top));
    ctx.globalAlpha = 0.35;
    const barHeight = ((c.volume || 0) / maxVolume) * volumeHeight;
    ctx.fillRect(cx - bodyWidth / 2, height - pad.bottom - barHeight, bodyWidth, barHeight);
    ctx.globalAlpha = 1;
    if (c.is_anomaly) {
      const my = y(c.high) - 4;
      ctx.fillStyle = CONFIDENCE_COLOURS[c.confidence] || CONFIDENCE_COLOURS.LOW;
      ctx.beginPath();
      ctx.moveTo(cx, my);
      ctx.lineTo(cx - 6, my - 10);
      ctx.lineTo(cx + 6, my - 10);
      ctx.closePath();
      ctx.fill();
      addMarker(markers, c, cx, my);
    }
  }
  const anomalies = candles.filter((c) => c.is_anomaly).length;
  const latest = candles[candles.length - 1];
  $("chart-summary").textContent =
    `${candles.length} candles to ${utc(latest.open_time)} UTC · last ${price(latest.close)} · ` +
    `${anomalies} anomal${anomalies === 1 ? "y" : "ies"}`;
  state.layout = { candles, x, y, first, span, plotWidth, pad };
}

function describe(c) {
  const lines = [
    `${c.symbol} ${utc(c.open_time)} UTC`,
    `O ${price(c.open)}  H ${price(c.high)}  L ${price(c.low)}  C ${price(c.close)}`,
    `return ${signed(c.return_pct)}%  volume ${c.volume?.toPrecision(4) ?? "–"}  votes ${c.votes ?? "–"}`,
  ];
  if (c.is_anomaly) lines.push(`ANOMALY (${c.confidence}): ${c.reasons || "no reason given"}`);
  if (c.market_event) lines.push("market-wide event");
  return lines.join("\n");
}

function addMarker(container, c, cx, bottomY) {
  const marker = document.createElement("div");
  marker.className = "anomaly-marker";
  marker.dataset.anomalyMarker = c.symbol;
  marker.style.left = `${cx}px`;
  marker.style.top = `${bottomY}px`;
  marker.dataset.openTime = String(c.open_time);
  marker.dataset.confidence = c.confidence;
  marker.dataset.reasons = c.reasons || "";
  marker.title = `${c.confidence}: ${c.reasons || "anomaly"}`;
  marker.addEventListener("mouseenter", () => showTooltip(c, cx, bottomY));
  marker.addEventListener("mouseleave", hideTooltip);
  container.appendChild(marker);
}

function showTooltip(c, px, py) {
  const tooltip = $("tooltip");
  tooltip.textContent = describe(c);
  tooltip.hidden = false;
  const wrap = $("chart-wrap");
  const left = Math.min(px + 12, wrap.clientWidth - tooltip.offsetWidth - 4);
  tooltip.style.left = `${Math.max(4, left)}px`;
  tooltip.style.top = `${Math.max(4, py - tooltip.offsetHeight - 18)}px`;
}

function hideTooltip() {
  $("tooltip").hidden = true;
}

function hoverCandle(event) {
  const layout = state.layout;
  if (!layout) return;
  const px = event.offsetX;
  const t = layout.first - MINUTE_MS / 2 + ((px - layout.pad.left) / layout.plotWidth) * layout.span;
  let nearest = null;
  for (const c of layout.candles) {
    if (!nearest || Math.abs(c.open_time - t) < Math.abs(nearest.open_time - t)) nearest = c;
  }
  if (nearest && Math.abs(layout.x(nearest.open_time) - px) < 12) showTooltip(nearest, px, event.offsetY);
  else hideTooltip();
}

// -- wiring ---------------------------------------------------------------------------------------

function selectSymbol(symbol) {
  state.symbol = symbol;
  $("symbol").value = symbol;
  location.hash = encodeURIComponent(symbol);
  refreshChartOnly();
}

async function refreshChartOnly() {
  if (!state.symbol) return;
  const data = await getJSON(
    `/api/candles?symbol=${encodeURIComponent(state.symbol)}&minutes=${$("minutes").value}`);
  state.candles = data.candles;
  drawChart();
}

$("symbol").addEventListener("change", (event) => selectSymbol(event.target.value));
$("minutes").addEventListener("change", refreshChartOnly);
$("filters").addEventListener("input", () =>
  getJSON(`/api/anomalies?${filterQuery()}`).then((data) => renderAnomalies(data.anomalies)));
$("filters").addEventListener("submit", (event) => event.preventDefault());
$("chart").addEventListener("mousemove", hoverCandle);
$("chart").addEventListener("mouseleave", hideTooltip);
window.addEventListener("resize", drawChart);
refresh();
