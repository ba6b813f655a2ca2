// The collector's page: reads /v1 on its own origin and shows the live tape (the SSE stream),
// longs vs shorts liquidated USD per minute (history, then live), the largest liquidations and
// coverage per venue. Decimals stay exact: the API sends them as strings, sums are BigInt at 18
// places, and what is shown is rounded once, half up, from those (prices and quantities are
// shown as sent). A minute no venue recorded is a gap (null), never a zero.
//
// The stream is read with fetch, not EventSource: EventSource cannot send the bearer token
// (`[http] api_token_file`). It resumes the way EventSource does, with Last-Event-ID.
"use strict";
(() => {
  const MINUTE = 60_000;
  const TAPE_ROWS = 200;
  const LARGEST_SHOWN = 10;
  const LARGEST_KEPT = 100; // more than shown, so the window can slide past a few
  const ROW_CAP = 100_000; // history rows loaded at most; older minutes are then left out
  const SLICE = 15 * MINUTE; // history is read newest slice first
  const RETRY_MIN = 500;
  const RETRY_MAX = 5_000;
  const COVERAGE_EVERY = 30_000;
  const TOKEN_KEY = "collector.api_token";
  const SCALE = 18n;
  const params = new URLSearchParams(location.search);
  const HOURS = Math.min(24, Math.max(1, Math.round(Number(params.get("hours")) || 3)));
  const $ = (id) => document.getElementById(id);

  // -- exact decimals ---------------------------------------------------------------------
  /** A decimal string as a BigInt of 10^-18 units (rounded half up past 18 places); null for
   * null or anything that is not a plain decimal. */
  function units(text) {
    const m = text == null ? null : /^(-?)(\d*)(?:\.(\d*))?$/.exec(text);
    if (!m || (m[2] === "" && !m[3])) return null;
    const frac = m[3] || "";
    let u = BigInt((m[2] || "0") + frac.slice(0, 18).padEnd(18, "0"));
    if (frac.length > 18 && frac[18] >= "5") u += 1n;
    return m[1] ? -u : u;
  }
  function digits(u, places) {
    const neg = u < 0n;
    let a = neg ? -u : u;
    const step = 10n ** (SCALE - BigInt(places));
    a = (a + step / 2n) / step;
    const s = a.toString().padStart(places + 1, "0");
    return [neg && a !== 0n ? "-" : "", s.slice(0, s.length - places), s.slice(s.length - places)];
  }
  /** `u` rounded half up to `places`, with thousands separators: "1,234.57". */
  function fixed(u, places) {
    const [sign, int, frac] = digits(u, places);
    return sign + int.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (places ? "." + frac : "");
  }
  /** `u` exactly, trailing zeros dropped: "3904.3125". */
  function plain(u) {
    const [sign, int, frac] = digits(u, 18);
    const f = frac.replace(/0+$/, "");
    return sign + int + (f ? "." + f : "");
  }
  const usd = (text) => {
    const u = units(text);
    return u === null ? "—" : "$" + fixed(u, 2);
  };
  const toNumber = (u) => Number(u / 10n ** 10n) / 1e8; // for drawing only

  // -- times (UTC) --------------------------------------------------------------------------
  const ms = (iso) => Date.parse(iso.slice(0, 23) + "Z"); // the API's ISO: microseconds, Z
  const isoOf = (t) => new Date(t).toISOString();
  const day = (iso) => iso.slice(0, 10);
  const hms = (iso) => iso.slice(11, 19);
  function duration(t) {
    const s = Math.round(t / 1000);
    const parts = [[Math.floor(s / 3600), "h"], [Math.floor(s / 60) % 60, "min"], [s % 60, "s"]];
    return parts.filter(([n]) => n).map(([n, unit]) => `${n} ${unit}`).join(" ") || "0 s";
  }
  /** "2026-11-21 11:20:00 → 11:35:00 UTC (15 min)"; the end is "now" when it is the query's. */
  function interval(startIso, endIso, toIso) {
    const now = endIso >= toIso;
    const end = now ? "now" : day(endIso) === day(startIso) ? hms(endIso) : endIso.slice(0, 19).replace("T", " ");
    return `${day(startIso)} ${hms(startIso)} → ${end} UTC (${duration(ms(endIso) - ms(startIso))})`;
  }

  // -- the state of one load (a reload starts a new one) ------------------------------------
  let generation = 0;
  let state = null;
  let chart = null;

  function fresh(now) {
    return {
      now,
      start: Math.floor((now - HOURS * 3600_000) / MINUTE) * MINUTE,
      minutes: new Map(), // minute start (ms) -> {long, short, other: BigInt, unknown: n}
      largest: [], // [units, item], largest first
      tape: 0,
      seen: new Set(), // the history's rows, which the stream may send again (see start())
      pending: [], // stream rows that came before the history was in
      ready: false,
      streamOpen: false,
      lastId: null,
      coverage: null, // {to, venues} as /v1/coverage answered
      covered: [], // [startMs, endMs] of any venue, recorded or repaired
      truncatedFrom: null,
      abort: null,
    };
  }

  class NeedToken extends Error {}

  function auth() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: `Bearer ${token}` } : {};
  }
  async function problem(resp) {
    try {
      return (await resp.json()).error || resp.statusText;
    } catch {
      return resp.statusText;
    }
  }
  async function getJson(path) {
    const resp = await fetch(path, { headers: auth(), cache: "no-store" });
    if (resp.status === 401) throw new NeedToken(await problem(resp));
    if (!resp.ok) throw new Error(`${path.split("?")[0]} answered ${resp.status}: ${await problem(resp)}`);
    return resp.json();
  }

  // -- rows ----------------------------------------------------------------------------------
  const key = (r) => [r.venue, r.market, r.symbol, r.liquidated_side, r.price, r.qty, r.trade_time].join("|");

  function count(item) {
    const t = ms(item.trade_time);
    if (t < state.start) return;
    const minute = Math.floor(t / MINUTE) * MINUTE;
    let b = state.minutes.get(minute);
    if (!b) state.minutes.set(minute, (b = { long: 0n, short: 0n, other: 0n, unknown: 0 }));
    const u = units(item.notional_usd);
    if (u === null) {
      b.unknown += 1;
      return;
    }
    const side = item.liquidated_side === "LONG" ? "long" : item.liquidated_side === "SHORT" ? "short" : "other";
    b[side] += u;
    const list = state.largest;
    if (list.length < LARGEST_KEPT || u > list[list.length - 1][0]) {
      let i = list.length;
      while (i > 0 && list[i - 1][0] < u) i -= 1;
      list.splice(i, 0, [u, item]);
      if (list.length > LARGEST_KEPT) list.pop();
      state.largestChanged = true;
    }
  }

  function historyRow(item) {
    count(item);
    state.seen.add(key(item));
  }

  function liveRow(item) {
    if (!state.seen.delete(key(item))) count(item); // else the history counted it already
    tapeRow(item);
    scheduleRender();
  }

  function cells(tr, item, withDate) {
    const side = item.liquidated_side === "LONG" ? "long" : item.liquidated_side === "SHORT" ? "short" : "?";
    const time = withDate ? item.trade_time.slice(0, 19).replace("T", " ") : item.trade_time.slice(11, 23);
    const values = [
      ["time", time], ["venue", item.venue], ["symbol", item.symbol], ["side " + side, side],
      ["num price", item.price ?? "—"], ["num qty", item.qty ?? "—"], ["num usd", usd(item.notional_usd)],
    ];
    for (const [cls, text] of values) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      tr.appendChild(td);
    }
    tr.className = side;
    return tr;
  }

  function tapeRow(item) {
    const body = $("tape").tBodies[0];
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    body.insertBefore(cells(document.createElement("tr"), item, false), body.firstChild);
    while (body.rows.length > TAPE_ROWS) body.deleteRow(-1);
  }

  function placeholder(table, text) {
    const body = $(table).tBodies[0];
    body.replaceChildren();
    const tr = body.insertRow();
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = 7;
    td.textContent = text;
  }

  // -- the stream ------------------------------------------------------------------------------
  /** Read Server-Sent Events from `body`, calling `message(event, data, id)` for each; returns
   * what `message` returns when that is not undefined (the stream's last words), or null at its
   * end. */
  async function readEvents(body, message) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let event = "";
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line === "") {
          const result = data.length ? message(event || "message", data.join("\n"), id) : undefined;
          if (result !== undefined) {
            reader.cancel().catch(() => {});
            return result;
          }
          [data, event, id] = [[], "", null];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") data.push(text);
          else if (field === "event") event = text;
          else if (field === "id") id = text;
        }
      }
    }
  }

  function onMessage(event, data, id) {
    if (event === "error") return JSON.parse(data); // {reason, message}: the stream ends
    if (event !== "message") return undefined;
    if (id !== null) state.lastId = id;
    const item = JSON.parse(data);
    if (state.ready) liveRow(item);
    else state.pending.push(item);
    return undefined;
  }

  const sleep = (t) => new Promise((resolve) => setTimeout(resolve, t));

  async function streamLoop(gen, opened) {
    let delay = RETRY_MIN;
    while (gen === generation) {
      const ctrl = new AbortController();
      state.abort = ctrl;
      let end = null;
      try {
        const headers = auth();
        if (state.lastId) headers["Last-Event-ID"] = state.lastId;
        const resp = await fetch("/v1/liquidations/stream", { headers, signal: ctrl.signal, cache: "no-store" });
        if (gen !== generation) return; // a reload started meanwhile: this stream is not its
        if (resp.status === 401) {
          opened.reject(new NeedToken(await problem(resp)));
          if (gen === generation) needToken(true);
          return;
        }
        if (!resp.ok) throw new Error(`the stream answered ${resp.status}: ${await problem(resp)}`);
        opened.resolve();
        state.streamOpen = true;
        delay = RETRY_MIN;
        if (state.ready) status("live", "live");
        end = await readEvents(resp.body, onMessage);
      } catch (err) {
        end = { reason: "network", message: String(err && err.message ? err.message : err) };
      }
      if (gen !== generation) return;
      state.streamOpen = false;
      if (end && (end.reason === "cursor_too_old" || end.reason === "cursor_unknown")) {
        start(); // the rows since cannot be caught up: load everything again
        return;
      }
      status("reconnecting", `reconnecting: ${end ? end.message : "the stream ended"}`);
      await sleep(delay);
      delay = Math.min(delay * 2, RETRY_MAX);
    }
  }

  // -- history and coverage ------------------------------------------------------------------
  async function loadHistory(gen) {
    let rows = 0;
    for (let to = state.now; to > state.start; to -= SLICE) {
      const from = Math.max(state.start, to - SLICE);
      let cursor = null;
      do {
        const q = new URLSearchParams({ from: isoOf(from), to: isoOf(to) });
        if (cursor) q.set("cursor", cursor);
        const body = await getJson(`/v1/liquidations?${q}`);
        if (gen !== generation) return;
        body.liquidations.forEach(historyRow);
        rows += body.liquidations.length;
        cursor = body.next;
      } while (cursor);
      if (rows >= ROW_CAP && from > state.start) {
        state.truncatedFrom = from;
        state.start = from;
        break;
      }
    }
  }

  async function loadCoverage(gen) {
    const to = Date.now();
    const q = new URLSearchParams({ from: isoOf(state.start), to: isoOf(to) });
    const body = await getJson(`/v1/coverage?${q}`);
    if (gen !== generation) return;
    state.coverage = body;
    state.covered = [];
    for (const v of body.venues) {
      for (const c of v.covered) state.covered.push([ms(c.start), ms(c.end)]);
      for (const g of v.gaps) if (g.repaired) state.covered.push([ms(g.start), ms(g.end)]);
    }
    renderCoverage();
  }

  // -- drawing ---------------------------------------------------------------------------------
  function recorded(minute) {
    return state.covered.some(([s, e]) => s < minute + MINUTE && e > minute);
  }

  /** The chart's minutes: null where no venue recorded the minute and no row fell in it. */
  function series() {
    const xs = [];
    const longs = [];
    const shorts = [];
    const exact = [];
    for (let m = state.start; m < state.now; m += MINUTE) { // every minute begun before now
      const b = state.minutes.get(m);
      const known = b !== undefined || recorded(m);
      xs.push(m / 1000);
      longs.push(known ? toNumber(b ? b.long : 0n) : null);
      shorts.push(known ? -toNumber(b ? b.short : 0n) : null);
      exact.push(known ? { long: b ? b.long : 0n, short: b ? b.short : 0n } : null);
    }
    return { xs, longs, shorts, exact };
  }

  function compact(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return `${+(a / 1e9).toFixed(1)}B`;
    if (a >= 1e6) return `${+(a / 1e6).toFixed(1)}M`;
    if (a >= 1e3) return `${+(a / 1e3).toFixed(1)}k`;
    return `${+a.toFixed(0)}`;
  }

  function renderChart() {
    const s = series();
    state.series = s;
    const box = $("minutes-chart");
    const width = Math.max(300, box.clientWidth);
    if (!chart) {
      const bars = uPlot.paths.bars({ size: [0.9, 24] });
      const exactOf = (side) => (u, v, si, i) => {
        if (i == null || !state.series) return "--";
        const e = state.series.exact[i];
        return e ? "$" + fixed(e[side], 2) : "not recorded";
      };
      chart = new uPlot({
        width,
        height: 260,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        scales: {
          // To the end of the current minute, so that its bar is whole.
          x: { time: true, range: (u, lo, hi) => [state.start / 1000, hi + 60] },
        },
        axes: [
          { values: (u, splits) => splits.map((x) => isoOf(x * 1000).slice(11, 16)) },
          { size: 60, values: (u, splits) => splits.map(compact) },
        ],
        series: [
          { value: (u, x) => (x == null ? "--" : `${isoOf(x * 1000).slice(0, 16).replace("T", " ")} UTC`) },
          { label: "longs", stroke: "#b83227", fill: "rgba(184, 50, 39, 0.75)", paths: bars, points: { show: false }, value: exactOf("long") },
          { label: "shorts", stroke: "#1e7b4f", fill: "rgba(30, 123, 79, 0.75)", paths: bars, points: { show: false }, value: exactOf("short") },
        ],
        hooks: { drawClear: [shadeGaps] },
      }, [s.xs, s.longs, s.shorts], box);
    } else {
      chart.setData([s.xs, s.longs, s.shorts]);
    }
    const unknown = [...state.minutes.values()].reduce((n, b) => n + b.unknown, 0);
    const notes = [];
    if (state.truncatedFrom !== null) notes.push(`History is limited to ${ROW_CAP.toLocaleString("en")} rows: shown from ${isoOf(state.truncatedFrom).slice(11, 16)} UTC.`);
    if (unknown) notes.push(`${unknown} liquidation(s) without a USD value yet (COIN-M contract size unknown) are not in the sums.`);
    notes.push("Grey: minutes that no venue recorded (a gap, not a zero). Longs up, shorts down.");
    $("minutes-note").textContent = notes.join(" ");
  }

  function shadeGaps(u) {
    const s = state.series;
    if (!s) return;
    const ctx = u.ctx;
    const { top, height } = u.bbox;
    ctx.save();
    ctx.fillStyle = "rgba(120, 120, 120, 0.18)";
    s.longs.forEach((v, i) => {
      if (v !== null) return;
      const x0 = u.valToPos(s.xs[i], "x", true);
      const x1 = u.valToPos(s.xs[i] + 60, "x", true);
      ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
    });
    ctx.restore();
  }

  function renderLargest() {
    state.largestChanged = false;
    const shown = state.largest.filter(([, item]) => ms(item.trade_time) >= state.start).slice(0, LARGEST_SHOWN);
    if (!shown.length) return placeholder("largest", "none in the window");
    const body = $("largest").tBodies[0];
    body.replaceChildren(...shown.map(([, item]) => cells(document.createElement("tr"), item, true)));
  }

  function renderCoverage() {
    const box = $("coverage");
    const { venues, from, to } = state.coverage;
    const t0 = ms(from);
    const span = ms(to) - t0;
    const at = (iso) => (100 * (ms(iso) - t0)) / span;
    box.replaceChildren();
    for (const v of venues) {
      const row = document.createElement("div");
      row.className = "venue";
      row.dataset.venue = v.venue;
      const name = document.createElement("div");
      name.className = "venue-name";
      name.textContent = v.venue;
      const bar = document.createElement("div");
      bar.className = "bar";
      const pieces = [
        ...v.covered.map((c) => ["covered", c]),
        ...v.gaps.map((g) => [g.repaired ? "repaired" : "gap", g]),
      ];
      for (const [cls, p] of pieces) {
        const el = document.createElement("span");
        el.className = cls;
        el.style.left = `${at(p.start)}%`;
        el.style.width = `${Math.max(0.2, at(p.end) - at(p.start))}%`;
        el.title = `${cls}: ${interval(p.start, p.end, to)}`;
        bar.appendChild(el);
      }
      const list = document.createElement("ul");
      list.className = "gaps";
      for (const g of v.gaps) {
        const li = document.createElement("li");
        li.className = g.repaired ? "repaired-label" : "gap-label";
        const whole = g.start <= from && g.end >= to;
        li.textContent = interval(g.start, g.end, to) +
          (g.repaired ? `, repaired from ${(g.repair_sources || []).join(", ")}` : "") +
          (whole ? ": nothing recorded in the window" : "");
        list.appendChild(li);
      }
      if (!v.gaps.length) {
        const li = document.createElement("li");
        li.className = "no-gaps";
        li.textContent = "no gaps";
        list.appendChild(li);
      }
      row.append(name, bar, list);
      box.appendChild(row);
    }
  }

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (!state || !state.ready) return;
      renderChart();
      if (state.largestChanged) renderLargest();
    });
  }

  // -- status, token, start ----------------------------------------------------------------------
  function status(kind, text) {
    const el = $("status");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function needToken(refused) {
    generation += 1;
    if (state && state.abort) state.abort.abort();
    const had = sessionStorage.getItem(TOKEN_KEY);
    sessionStorage.removeItem(TOKEN_KEY);
    $("main").hidden = true;
    $("auth").hidden = false;
    $("auth-message").textContent = refused && had
      ? "The token was refused. This collector's API needs a bearer token ([http] api_token_file)."
      : "This collector's API needs a bearer token ([http] api_token_file).";
    status("token", "needs a token");
    $("auth-token").focus();
  }

  function fail(gen, err) {
    const el = $("error");
    el.hidden = false;
    el.textContent = `Could not load: ${err.message || err}. Trying again in 5 s.`;
    status("error", "error");
    setTimeout(() => gen === generation && start(), 5_000);
  }

  function deferred() {
    const d = {};
    d.promise = new Promise((resolve, reject) => Object.assign(d, { resolve, reject }));
    d.promise.catch(() => {});
    return d;
  }

  async function start() {
    const gen = ++generation;
    if (state && state.abort) state.abort.abort();
    state = fresh(Date.now());
    $("auth").hidden = true;
    $("main").hidden = false;
    $("error").hidden = true;
    $("hours").textContent = String(HOURS);
    placeholder("tape", "waiting for liquidations…");
    placeholder("largest", "loading…");
    status("loading", "loading");
    // The stream first, so that no row commits unseen between the history and the stream. A row
    // the stream sends after it joined may be in the history too (committed before the history
    // was read, but not yet final for the feed: see docs/architecture.md on xmin), so the
    // history's rows are kept by content, and such a row is counted once.
    const opened = deferred();
    streamLoop(gen, opened);
    try {
      await opened.promise;
      await loadCoverage(gen);
      await loadHistory(gen);
      if (gen !== generation) return;
      state.ready = true;
      state.pending.forEach(liveRow);
      state.pending = [];
      renderChart();
      renderLargest();
      if (state.streamOpen) status("live", "live");
    } catch (err) {
      if (gen !== generation) return;
      if (err instanceof NeedToken) needToken(true);
      else fail(gen, err);
    }
  }

  /** Every second: the clock; each new minute slides the window; coverage every 30 s. */
  let lastCoverage = Date.now();
  function tick() {
    const now = Date.now();
    $("clock").textContent = `${isoOf(now).slice(11, 19)} UTC`;
    if (!state || !state.ready) return;
    if (Math.floor(now / MINUTE) !== Math.floor(state.now / MINUTE)) {
      state.now = now;
      const from = Math.floor((now - HOURS * 3600_000) / MINUTE) * MINUTE;
      if (from > state.start) {
        state.start = from;
        for (const m of state.minutes.keys()) if (m < from) state.minutes.delete(m);
        for (const k of state.seen) if (ms(k.slice(k.lastIndexOf("|") + 1)) < from) state.seen.delete(k);
        renderLargest();
      }
      renderChart();
    }
    if (now - lastCoverage >= COVERAGE_EVERY) {
      lastCoverage = now;
      const gen = generation;
      loadCoverage(gen).then(() => gen === generation && renderChart()).catch(() => {});
    }
  }

  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("auth-token").value.trim());
    $("auth-token").value = "";
    start();
  });
  window.addEventListener("resize", () => chart && chart.setSize({ width: Math.max(300, $("minutes-chart").clientWidth), height: 260 }));

  // For tests and the curious: what the page derived from the API.
  window.collectorPage = {
    minutes: () => (state && state.series ? state.series.exact.map((e, i) => ({
      minute: isoOf(state.series.xs[i] * 1000),
      longs: e ? plain(e.long) : null,
      shorts: e ? plain(e.short) : null,
    })) : []),
    lastEventId: () => (state ? state.lastId : null),
  };

  setInterval(tick, 1000);
  tick();
  start();
})();
