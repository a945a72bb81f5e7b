// The dashboard page: TradingView's Lightweight Charts (vendored under /static/vendor, so the page works
// without internet) draws the candles, a volume pane and the anomaly markers; zoom with the wheel, pan by
// dragging, the crosshair fills the legend. Live updates arrive as server-sent events (/api/events): new
// candles of the shown symbol, and a "progress" event per micro-batch that refreshes the table and health.
// The chart's anomalies are also listed as DOM chips (.anomaly-marker, data-*) that move the chart to them.
// With thousands of symbols nothing lists them all: the picker shows the symbols matching its search box
// (/api/symbols?q=, at most SYMBOLS_LISTED), and the health panel the counts and the symbols furthest behind.
"use strict";

const REFRESH_AT_MOST_MS = 2000; // progress events come once per micro-batch; the table and health need less
const MAX_BARS = 5000;
const SYMBOLS_LISTED = 100; // in the picker, per search
const HEALTH_LISTED = 20; // symbols furthest behind in the health panel
const SEARCH_DELAY_MS = 150; // after the last keystroke
const CONFIDENCE_COLOURS = { HIGH: "#ff1744", MEDIUM: "#ff9100", LOW: "#ffd600", NONE: "#ffd600" };
const $ = (id) => document.getElementById(id);

const state = { symbol: decodeURIComponent(location.hash.slice(1)) || null, candles: [], byTime: new Map(),
                stream: null, hovering: false, search: "" };

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

function behind(ms) {
  if (!ms) return "–";
  const minutes = ms / 60_000;
  return minutes < 120 ? `${Math.round(minutes)} min` : minutes < 2880 ? `${(minutes / 60).toFixed(1)} h` : `${(minutes / 1440).toFixed(1)} d`;
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

function symbolsQuery() {
  return new URLSearchParams({ q: state.search, limit: String(SYMBOLS_LISTED) }).toString();
}

// The picker lists the search's matches, and the shown symbol even when it is not one of them.
function updateSymbols(symbols, newestAnomaly) {
  const chartSelect = $("symbol");
  // Without a choice (or #SYMBOL in the address), show where the latest anomaly happened.
  if (!state.symbol) state.symbol = newestAnomaly ? newestAnomaly.symbol : symbols[0] || null;
  const listed = state.symbol && !symbols.includes(state.symbol) ? [state.symbol, ...symbols] : symbols;
  if ([...chartSelect.options].map((o) => o.value).join() !== listed.join()) {
    chartSelect.replaceChildren(...listed.map((s) => new Option(s, s)));
    $("symbol-options").replaceChildren(...symbols.map((s) => new Option(s, s)));
  }
  if (state.symbol) chartSelect.value = state.symbol;
}

async function search() {
  const { symbols, matches } = await getJSON(`/api/symbols?${symbolsQuery()}`);
  // A search that leaves out the shown symbol shows its first match.
  const first = symbols.length && !symbols.includes(state.symbol) ? symbols[0] : null;
  if (first) state.symbol = first;
  updateSymbols(symbols, null);
  $("symbol").title = `${matches} symbol${matches === 1 ? "" : "s"} match` +
    (matches > symbols.length ? `, the first ${symbols.length} listed` : "");
  if (first) selectSymbol(first);
}

let searchTimer = null;
function searchSoon() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => search().catch((error) => showStatus(`search failed: ${error.message}`, true)),
                           SEARCH_DELAY_MS);
}

async function refresh() {
  try {
    const [{ symbols }, newest] = await Promise.all([
      getJSON(`/api/symbols?${symbolsQuery()}`),
      state.symbol ? Promise.resolve({ anomalies: [] }) : getJSON("/api/anomalies?limit=1"),
    ]);
    const before = state.symbol;
    updateSymbols(symbols, newest.anomalies[0]);
    const [anomalies, health] = await Promise.all([getJSON(`/api/anomalies?${filterQuery()}`),
                                                   getJSON(`/api/health?limit=${HEALTH_LISTED}`)]);
    renderAnomalies(anomalies.anomalies);
    renderHealth(health);
    if (state.symbol !== before || !state.stream) await loadChart();
    showStatus(`updated ${new Date().toISOString().slice(11, 19)} UTC`, false);
  } catch (error) {
    showStatus(`update failed: ${error.message}`, true);
  }
}

function showStatus(text, stale) {
  $("status").textContent = text;
  $("status").classList.toggle("stale", stale);
}

// The table and health follow the stream's progress events, at most once per REFRESH_AT_MOST_MS.
let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer === null) refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, REFRESH_AT_MOST_MS);
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

  const counts = health.symbols;
  $("symbol-counts").textContent = `${counts.total.toLocaleString()}: ${counts.fresh.toLocaleString()} fresh, ` +
    `${counts.stale.toLocaleString()} stale (no candle for ${counts.stale_after_ms / 1000} s behind the newest)`;
  $("symbol-counts").dataset.stale = String(counts.stale);
  fillTable($("last-candles"), health.last_candles, (row, c) => {
    cell(row, c.symbol);
    cell(row, utc(c.open_time));
    cell(row, behind(c.behind_ms), "num");
    cell(row, price(c.close), "num");
    if (c.stale) cell(row, "STALE", "stale");
    else cell(row, c.is_anomaly ? `ANOMALY ${c.confidence}` : "normal", c.is_anomaly ? `conf-${c.confidence}` : "");
    row.dataset.symbol = c.symbol;
    row.addEventListener("click", () => selectSymbol(c.symbol));
  }, "no candles yet");
}

// -- the chart (Lightweight Charts) --------------------------------------------------------------

const LWC = window.LightweightCharts;
const chart = LWC.createChart($("chart"), {
  autoSize: true,
  layout: { background: { type: "solid", color: "#161d27" }, textColor: "#8393a7", attributionLogo: true,
            panes: { separatorColor: "#263142", enableResize: true } },
  grid: { vertLines: { color: "#1e2835" }, horzLines: { color: "#1e2835" } },
  crosshair: { mode: LWC.CrosshairMode.Normal },
  rightPriceScale: { borderColor: "#263142" },
  timeScale: { borderColor: "#263142", timeVisible: true, secondsVisible: false, rightOffset: 4 },
});
const candleSeries = chart.addSeries(LWC.CandlestickSeries, {
  upColor: "#26a69a", downColor: "#ef5350", wickUpColor: "#26a69a", wickDownColor: "#ef5350", borderVisible: false,
  priceFormat: { type: "custom", formatter: price, minMove: 0.000001 },
});
const volumeSeries = chart.addSeries(LWC.HistogramSeries, { priceFormat: { type: "volume" }, priceLineVisible: false,
                                                            lastValueVisible: false }, 1);
chart.panes()[0].setStretchFactor(4); // the volume pane below takes a fifth of the height
chart.panes()[1].setStretchFactor(1);
const markers = LWC.createSeriesMarkers(candleSeries, []);
window.dashboard = { chart, candleSeries, volumeSeries, markers }; // for the browser test and the console

const seconds = (ms) => Math.floor(ms / 1000);

function ohlc(c, previousClose) {
  // Decisions without open/high/low (older jobs) are drawn from closes: open = previous close.
  const open = c.open ?? previousClose ?? c.close;
  return { open, high: c.high ?? Math.max(open, c.close), low: c.low ?? Math.min(open, c.close) };
}

function addBar(c) {
  const previous = state.candles.length ? state.candles[state.candles.length - 1] : null;
  const bar = { ...c, ...ohlc(c, previous?.close) };
  state.candles.push(bar);
  state.byTime.set(seconds(c.open_time), bar);
  return bar;
}

function barOf(bar) {
  return { time: seconds(bar.open_time), open: bar.open, high: bar.high, low: bar.low, close: bar.close };
}

function volumeOf(bar) {
  return { time: seconds(bar.open_time), value: bar.volume || 0,
           color: bar.close >= bar.open ? "rgba(38,166,154,0.55)" : "rgba(239,83,80,0.55)" };
}

function markerOf(bar) {
  const reasons = bar.reasons || "anomaly";
  return { time: seconds(bar.open_time), position: "aboveBar", shape: "arrowDown",
           color: CONFIDENCE_COLOURS[bar.confidence] || CONFIDENCE_COLOURS.LOW, text: reasons.split(" | ")[0] };
}

function setCandles(rows) {
  state.candles = [];
  state.byTime = new Map();
  rows.forEach(addBar);
  candleSeries.setData(state.candles.map(barOf));
  volumeSeries.setData(state.candles.map(volumeOf));
  chart.timeScale().fitContent();
  drawMarkers();
}

function appendCandles(rows) {
  const last = state.candles.length ? state.candles[state.candles.length - 1].open_time : -Infinity;
  let anomalies = false;
  for (const row of rows) {
    if (row.open_time <= last) continue; // already drawn (a resent event)
    const bar = addBar(row);
    candleSeries.update(barOf(bar));
    volumeSeries.update(volumeOf(bar));
    anomalies ||= Boolean(bar.is_anomaly);
  }
  if (state.candles.length > MAX_BARS) setCandles(state.candles.slice(-MAX_BARS));
  else if (anomalies) drawMarkers();
  else summarise();
}

function drawMarkers() {
  const flagged = state.candles.filter((c) => c.is_anomaly);
  markers.setMarkers(flagged.map(markerOf));
  $("chart-markers").replaceChildren(...flagged.map((c) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "anomaly-marker";
    chip.dataset.anomalyMarker = c.symbol;
    chip.dataset.openTime = String(c.open_time);
    chip.dataset.confidence = c.confidence;
    chip.dataset.reasons = c.reasons || "";
    chip.title = `${c.confidence}: ${c.reasons || "anomaly"}`;
    chip.textContent = `${utc(c.open_time).slice(11)} ${c.confidence} ${c.reasons || ""}`;
    chip.addEventListener("click", () => focusCandle(c));
    return chip;
  }));
  summarise();
}

function summarise() {
  const element = $("chart");
  const anomalies = state.candles.filter((c) => c.is_anomaly).length;
  element.dataset.candles = String(state.candles.length);
  element.dataset.markers = String(anomalies);
  const latest = state.candles[state.candles.length - 1];
  element.dataset.lastOpenTime = latest ? String(latest.open_time) : "";
  $("chart-summary").textContent = latest
    ? `${state.candles.length} candles to ${utc(latest.open_time)} UTC · last ${price(latest.close)} · ` +
      `${anomalies} anomal${anomalies === 1 ? "y" : "ies"}`
    : state.symbol ? `no decisions for ${state.symbol} yet` : "waiting for the detect job…";
  if (!state.hovering) showLegend(latest);
}

function focusCandle(c) {
  const t = seconds(c.open_time);
  chart.timeScale().setVisibleRange({ from: t - 30 * 60, to: t + 30 * 60 });
  showLegend(c);
}

function showLegend(c) {
  const legend = $("legend");
  if (!c) { legend.textContent = ""; return; }
  const lines = [
    `${c.symbol} ${utc(c.open_time)} UTC`,
    `O ${price(c.open)}  H ${price(c.high)}  L ${price(c.low)}  C ${price(c.close)}  ` +
      `return ${signed(c.return_pct)}%  volume ${c.volume?.toPrecision(4) ?? "–"}`,
  ];
  if (c.is_anomaly) lines.push(`ANOMALY (${c.confidence}): ${c.reasons || "no reason given"}`);
  if (c.market_event) lines.push("market-wide event");
  legend.textContent = lines.join("\n");
  legend.classList.toggle("anomalous", Boolean(c.is_anomaly));
}

chart.subscribeCrosshairMove((param) => {
  state.hovering = param.time !== undefined && param.point !== undefined;
  showLegend(state.hovering ? state.byTime.get(param.time) : state.candles[state.candles.length - 1]);
});

// -- the live stream ------------------------------------------------------------------------------

function connectStream() {
  if (state.stream) state.stream.close();
  const latest = state.candles[state.candles.length - 1];
  const params = new URLSearchParams({ symbol: state.symbol || "" });
  if (latest) params.set("after", String(latest.open_time));
  const stream = new EventSource(`/api/events?${params}`);
  stream.addEventListener("candles", (message) => {
    const data = JSON.parse(message.data);
    if (data.symbol === state.symbol) appendCandles(data.candles);
  });
  stream.addEventListener("progress", refreshSoon);
  stream.addEventListener("open", () => showStatus("live", false));
  stream.addEventListener("error", () => showStatus("live updates interrupted; reconnecting…", true));
  state.stream = stream;
}

async function loadChart() {
  if (!state.symbol) { setCandles([]); connectStream(); return; }
  const data = await getJSON(`/api/candles?symbol=${encodeURIComponent(state.symbol)}&minutes=${$("minutes").value}`);
  setCandles(data.candles);
  connectStream();
}

// -- wiring ---------------------------------------------------------------------------------------

function selectSymbol(symbol) {
  state.symbol = symbol;
  const select = $("symbol");
  if (![...select.options].some((o) => o.value === symbol)) select.prepend(new Option(symbol, symbol));
  select.value = symbol;
  location.hash = encodeURIComponent(symbol);
  loadChart().catch((error) => showStatus(`update failed: ${error.message}`, true));
}

$("symbol").addEventListener("change", (event) => selectSymbol(event.target.value));
$("symbol-search").addEventListener("input", (event) => { state.search = event.target.value.trim(); searchSoon(); });
$("minutes").addEventListener("change", () => selectSymbol(state.symbol));
$("filters").addEventListener("input", () =>
  getJSON(`/api/anomalies?${filterQuery()}`).then((data) => renderAnomalies(data.anomalies)));
$("filters").addEventListener("submit", (event) => event.preventDefault());
refresh();
