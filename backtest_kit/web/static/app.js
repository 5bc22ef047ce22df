// backtest-kit dashboard: reads the Server-Sent Events stream /api/stream (each `overview` event is the
// whole state) and renders it. No build step, no framework, no polling: the server pushes; a dropped
// connection is reopened after a short back-off. Every value goes into the page as text (textContent),
// never as HTML, so a strategy name or an error message cannot inject markup.
"use strict";

(function () {
  // A token for a non-loopback dashboard comes in the URL fragment (#token=...), which browsers never
  // send to the server; it is kept for this tab only and removed from the address bar.
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("bk-token", hash.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("bk-token");

  const $ = (sel) => document.querySelector(sel);
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, v);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  const fmt = (x, digits = 2) => (x == null || !isFinite(x) ? "—" : Number(x).toFixed(digits));
  // prices to a sensible precision for their size: 105,293.38 / 1.2345 / 0.00012345
  const price = (x) => {
    if (x == null) return "—";
    const a = Math.abs(x), digits = a >= 1000 ? 2 : a >= 1 ? 4 : 8;
    return Number(x).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  };
  const pct = (x) => (x == null ? "—" : (x > 0 ? "+" : "") + fmt(x) + "%");
  const signClass = (x) => (x == null || x === 0 ? "" : x > 0 ? "pos" : "neg");
  const time = (ms) => (ms == null ? "—" : new Date(ms).toISOString().slice(0, 16).replace("T", " "));
  const pair = (r) => r.strategy_name + " · " + r.symbol;

  // at most `limit` rows on the page (the API has them all); the card says how many it leaves out
  function fill(section, rows, render, limit = 1000) {
    const body = $(section + " tbody");
    body.replaceChildren(...rows.slice(0, limit).map(render));
    const empty = $(section + " .empty");
    if (empty) {
      if (empty.dataset.text === undefined) empty.dataset.text = empty.textContent;
      empty.classList.toggle("hidden", rows.length > 0 && rows.length <= limit);
      empty.textContent = rows.length > limit
        ? "… and " + (rows.length - limit) + " earlier (all in /api/" + section.slice(1) + ")" : empty.dataset.text;
    }
  }

  const td = (value, cls) => el("td", { class: cls }, value);
  const badge = (text, cls) => el("span", { class: "badge " + (cls || text) }, text);

  function towards(p) {
    const bar = el("div", { class: "bar", title: "TP " + fmt(p.percent_tp, 0) + "% / SL " + fmt(p.percent_sl, 0) + "%" });
    const tp = el("span", { class: "tp" });
    const sl = el("span", { class: "sl" });
    tp.style.width = Math.min(50, p.percent_tp / 2) + "%";
    sl.style.width = Math.min(50, p.percent_sl / 2) + "%";
    bar.append(tp, sl);
    return bar;
  }

  function chart(curve) {
    const pts = curve.points;
    const W = 600, H = 160, L = 2, R = 2, T = 6, B = 6;
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const y0 = Math.min(0, ...ys), y1 = Math.max(0, ...ys);
    const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": "equity curve of " + curve.strategy_name });
    const line = pts.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    root.append(
      svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
      svg("line", { class: "zero", x1: L, y1: sy(0), x2: W - R, y2: sy(0) }),
      svg("polygon", { class: "area", points: `${sx(x0)},${sy(0)} ${line} ${sx(x1)},${sy(0)}` }),
      svg("polyline", { class: "line", points: line }),
    );
    // the scale as text beside the drawing (an SVG stretched to the card's width would stretch text too)
    const last = ys[ys.length - 1];
    return el("div", { class: "chart" },
      el("div", { class: "title" }, el("span", {}, curve.strategy_name),
        el("span", { class: signClass(last) }, pct(last) + " · " + (pts.length - 1) + " trades")),
      root,
      el("div", { class: "scale" }, el("span", {}, "high " + pct(y1)), el("span", {}, "low " + pct(y0)),
        el("span", {}, time(x0) + " → " + time(x1))));
  }

  function render(o) {
    $("#meta").textContent = (o.mode === "remote" ? "fed from NATS · " : "engine clock " + time(o.now_ms) + " · ") +
      "updated " + time(o.generated_at) + " UTC";
    fill("#instances", o.instances, (i) => el("tr", {},
      td(i.strategy_name), td(i.symbol), td(i.exchange_name), el("td", {}, badge(i.status)),
      td(i.ticks, "num"), td(price(i.last_price), "num"), td(i.last_action || "—", "muted"),
      td(i.error || "", "wrap neg")));
    fill("#positions", o.positions, (p) => el("tr", {},
      td(pair(p)), el("td", {}, badge(p.position), p.scheduled ? " " : "", p.scheduled ? badge("scheduled") : ""),
      td(price(p.price_open), "num"), td(price(p.take_profit), "num"), td(price(p.stop_loss), "num"),
      td(price(p.current_price), "num"), td(pct(p.unrealized_pnl), "num " + signClass(p.unrealized_pnl)),
      el("td", {}, towards(p))));
    fill("#stats", o.stats, (s) => el("tr", {},
      td(pair(s)), td(s.total_trades, "num"), td(s.win_rate == null ? "—" : fmt(s.win_rate * 100, 1) + "%", "num"),
      td(pct(s.total_pnl), "num " + signClass(s.total_pnl)), td(fmt(s.sharpe_ratio, 3), "num"),
      td(s.max_drawdown == null ? "—" : fmt(s.max_drawdown) + "%", "num")));
    $("#equity .charts").replaceChildren(...o.equity.map(chart));
    $("#equity .empty").classList.toggle("hidden", o.equity.length > 0);
    fill("#events", o.events, (e) => el("tr", {},
      td(time(e.timestamp)), el("td", {}, badge(e.action)), td(pair(e)), td(e.position || "—"),
      td(price(e.current_price), "num"), td(pct(e.pnl), "num " + signClass(e.pnl)), td(e.close_reason || "")), 15);
    fill("#risk", o.risk, (r) => el("tr", {},
      td(time(r.timestamp)), td(pair(r)), td(r.position || "—"), td(price(r.price_open), "num"), td(r.comment, "wrap")), 10);
    fill("#partials", o.partials, (p) => el("tr", {},
      td(time(p.timestamp)), td(pair(p)), el("td", {}, badge(p.kind + " " + p.level + "%", p.kind === "profit" ? "long" : "short")),
      td(price(p.current_price), "num")), 10);
    fill("#errors", o.errors, (e) => el("tr", {}, td(time(e.timestamp)), td(e.type), td(e.message, "wrap")), 10);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  function status(on, text) {
    $("#conn-dot").className = "dot " + (on ? "on" : "off");
    $("#conn-text").textContent = text;
  }

  // SSE over fetch (EventSource cannot send the Authorization header a token needs).
  async function stream() {
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch("/api/stream", { headers, cache: "no-store" });
    if (!response.ok) throw new Error("stream: HTTP " + response.status);
    status(true, "live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (event === "overview" && data) render(JSON.parse(data));
      }
    }
  }

  let backoff = 500;
  async function connect() {
    try {
      await stream();
      backoff = 500;
      status(false, "disconnected; reconnecting…");
    } catch (err) {
      status(false, String(err.message || err) + "; reconnecting…");
      backoff = Math.min(backoff * 2, 10000);
    }
    setTimeout(connect, backoff);
  }
  connect();
})();
