// kiln's web page: a client of the REST API (/api/v1) with the admin token kept in this tab's sessionStorage (never
// in localStorage, never in the DOM). Every value from the API is rendered with textContent or set as a DOM property,
// never parsed as HTML; looks come from style.css classes, since the CSP forbids inline scripts and styles.
//
// This file holds what the views share: the token, the API client, element helpers, formatting, write-progress
// sampling, the confirmation dialog, the hash router and the polling loop. The views are fleet.js (the first page),
// host.js and enroll.js; charts.js draws the SVG pictures. It loads first; the others only define their view, and
// everything starts once the document is parsed.
"use strict";

const $ = (id) => document.getElementById(id);

const Kiln = {
  token: sessionStorage.getItem("kiln-token"),
  /** `fleet`, `host` (with `host`) or `enroll`, from the URL fragment. */
  route: { view: "fleet", host: null },
  /** The last `GET /hosts` answer. */
  hosts: [],
};

// ---------------------------------------------------------------- the API

/** An API failure: the status, the API's message and the request field it names (422/409 bodies). */
class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

async function api(method, path, body) {
  const r = await fetch("/api/v1" + path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + Kiln.token }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
    cache: "no-store",
  });
  const data = await r.json().catch(() => null);
  if (r.status === 401) {
    forgetToken();
    throw new ApiError(401, "the token was refused");
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.statusText, data && data.field);
  return data;
}

const hostPath = (name) => "/hosts/" + encodeURIComponent(name);

// ---------------------------------------------------------------- DOM helpers

/** An element with properties (`class`, `data`, `on<event>`, anything else as a DOM property) and children (strings
 * become text nodes). */
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "data") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/** A link to a host's page. */
function hostLink(name) {
  return el("a", { href: "#host=" + encodeURIComponent(name), class: "host-link" }, name);
}

/** A cell whose text may be elided by CSS; the full value is in its title. */
function cell(row, text, cls) {
  const value = text == null ? "" : String(text);
  const td = el("td", { class: cls, title: value || null }, value);
  row.appendChild(td);
  return td;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", !!isError);
}

// ---------------------------------------------------------------- formatting

/** `0.4 s`, `12.3 s`, `4m 05s`, `3h 12m`, `2d 4h`. */
function fmtDuration(ms) {
  if (ms == null || !isFinite(ms)) return "";
  const s = Math.max(0, ms) / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  const h = Math.floor(m / 60);
  if (h < 24) return h + "h " + String(m % 60).padStart(2, "0") + "m";
  return Math.floor(h / 24) + "d " + (h % 24) + "h";
}

/** Binary units: `512 B`, `3.5 MiB`, `1.02 GiB`. */
function fmtBytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)) + " " + units[i];
}

/** A time of day, with the date when it is not today. */
function fmtClock(t) {
  const d = typeof t === "number" ? new Date(t) : new Date(Date.parse(t));
  if (isNaN(d)) return "";
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return today ? time : d.toLocaleDateString() + " " + time;
}

const firstLine = (s) => String(s || "").split("\n")[0];

const plural = (n, one, many) => n + " " + (n === 1 ? one : many);

// ---------------------------------------------------------------- write progress

/** The agent's progress per host, sampled at each refresh to show a rate and an ETA. */
const Progress = (() => {
  const WINDOW_MS = 20000;
  const seen = new Map();

  /** Records `p` (HostOut.progress) for `host`; a new command starts a new series. */
  function sample(host, p, now) {
    let s = seen.get(host);
    if (!s || s.command !== p.command_id || s.phase !== p.phase) s = { command: p.command_id, phase: p.phase, samples: [] };
    const last = s.samples[s.samples.length - 1];
    if (!last || last[1] !== p.bytes_written || now - last[0] > 5000) s.samples.push([now, p.bytes_written]);
    while (s.samples.length > 2 && now - s.samples[0][0] > WINDOW_MS) s.samples.shift();
    s.p = p;
    seen.set(host, s);
    return s;
  }

  /** Forgets hosts that no longer report progress. */
  function keep(hosts) {
    for (const h of [...seen.keys()]) if (!hosts.has(h)) seen.delete(h);
  }

  /** Bytes per second over the sampling window, once it spans a second. */
  function rate(host) {
    const s = seen.get(host);
    if (!s || s.samples.length < 2) return null;
    const [t0, b0] = s.samples[0];
    const [t1, b1] = s.samples[s.samples.length - 1];
    return t1 - t0 >= 1000 ? Math.max(0, b1 - b0) / ((t1 - t0) / 1000) : null;
  }

  /** `<progress>` and its words: bytes, percent, rate, ETA. */
  function view(host, p) {
    const total = p.total_bytes;
    const bar = el("progress", { max: 1, class: "bar" });
    if (total) bar.value = Math.min(1, p.bytes_written / total);
    const r = rate(host);
    const words = [p.phase];
    if (total) {
      words.push(fmtBytes(p.bytes_written) + " / " + fmtBytes(total) + " (" + Math.floor((100 * p.bytes_written) / total) + "%)");
    } else {
      words.push(fmtBytes(p.bytes_written));
    }
    if (r != null) words.push(fmtBytes(Math.round(r)) + "/s");
    if (r && total && p.bytes_written < total) words.push("ETA " + fmtDuration((1000 * (total - p.bytes_written)) / r));
    bar.title = words.join(" · ");
    return { bar, text: words.join(" · "), fraction: total ? p.bytes_written / total : null };
  }

  return { sample, keep, rate, view };
})();

// ---------------------------------------------------------------- confirmation

/** Asks before a destructive action: a modal dialog; resolves to `{ ok, erase }`. */
function confirmDialog({ title, text, ok, erase }) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  $("confirm-erase").hidden = !erase;
  $("confirm-erase-mode").value = "";
  d.returnValue = "";
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve({ ok: d.returnValue === "ok", erase: $("confirm-erase-mode").value }), {
      once: true,
    });
    d.showModal();
    $("confirm-cancel").focus();
  });
}

// ---------------------------------------------------------------- routing and polling

/** Reads the fragment: `#host=NAME`, `#enroll`, anything else the fleet. A `token=` in it (how `kiln` opens the page
 * logged in) is moved to sessionStorage and removed from the address bar. */
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    Kiln.token = params.get("token");
    sessionStorage.setItem("kiln-token", Kiln.token);
  }
  if (params.has("token")) {
    params.delete("token");
    const rest = [...params].map(([k, v]) => (v ? k + "=" + encodeURIComponent(v) : k)).join("&");
    history.replaceState(null, "", location.pathname + (rest ? "#" + rest : ""));
  }
  if (params.get("host")) Kiln.route = { view: "host", host: params.get("host") };
  else if (params.has("enroll")) Kiln.route = { view: "enroll", host: null };
  else Kiln.route = { view: "fleet", host: null };
}

function go(hash) {
  if (location.hash === hash || (hash === "#" && location.hash === "")) route();
  else location.hash = hash;
}

function show() {
  const on = !!Kiln.token;
  $("login").hidden = on;
  $("logout").hidden = !on;
  $("nav").hidden = !on;
  for (const v of ["fleet", "host", "enroll"]) $(v).hidden = !on || Kiln.route.view !== v;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === Kiln.route.view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!on) {
    $("summary").textContent = "";
    $("fleet").hidden = true;
  }
}

function forgetToken() {
  sessionStorage.removeItem("kiln-token");
  Kiln.token = null;
  Kiln.hosts = [];
  show();
}

function route() {
  readFragment();
  show();
  if (Kiln.route.view === "enroll") Enroll.open();
  refresh();
}

let refreshing = null;
let again = false;

/** One poll: the host list, then what the shown view needs. Overlapping calls run once more afterwards. */
function refresh() {
  if (!Kiln.token) return Promise.resolve();
  if (refreshing) {
    again = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      const hosts = await api("GET", "/hosts");
      Kiln.hosts = hosts;
      const counts = {};
      for (const h of hosts) counts[h.state] = (counts[h.state] || 0) + 1;
      $("summary").textContent =
        plural(hosts.length, "host", "hosts") +
        (hosts.length ? ": " : "") +
        Object.entries(counts)
          .map(([s, n]) => n + " " + s)
          .join(" · ");
      const view = Kiln.route.view;
      if (view === "fleet") await Fleet.refresh(hosts);
      else if (view === "host") await HostView.refresh(Kiln.route.host);
      setStatus("updated " + new Date().toLocaleTimeString([], { hour12: false }));
    } catch (e) {
      setStatus("error: " + e.message, true);
    } finally {
      refreshing = null;
    }
    if (again) {
      again = false;
      await refresh();
    }
  })();
  return refreshing;
}

function start() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    Kiln.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem("kiln-token", Kiln.token);
    route();
  });
  $("logout").addEventListener("click", forgetToken);
  $("confirm").addEventListener("cancel", () => ($("confirm").returnValue = "cancel"));
  window.addEventListener("hashchange", route);
  Fleet.init();
  HostView.init();
  Enroll.init();
  route();
  setInterval(refresh, 2000);
}

document.addEventListener("DOMContentLoaded", start);
