// kiln's web page: a client of the REST API (/api/v1) with the admin token kept in this tab's sessionStorage.
// Every value from the API is rendered with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("kiln-token");
let selected = null;

// `#token=...&host=...` opens the page logged in and on a host (the fragment never reaches the server).
(function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    token = params.get("token");
    sessionStorage.setItem("kiln-token", token);
  }
  if (params.get("host")) selected = params.get("host");
  if (params.has("token")) history.replaceState(null, "", location.pathname + (selected ? "#host=" + encodeURIComponent(selected) : ""));
})();

async function api(method, path, body) {
  const r = await fetch("/api/v1" + path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + token }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await r.json().catch(() => null);
  if (r.status === 401) {
    sessionStorage.removeItem("kiln-token");
    token = null;
    show();
    throw new Error("the token was refused");
  }
  if (!r.ok) throw new Error((data && (data.field ? data.field + ": " : "") + data.error) || r.statusText);
  return data;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function seconds(ms) {
  return ms == null ? "running" : (ms / 1000).toFixed(1) + " s";
}

function progressText(p) {
  if (!p || !p.total_bytes) return p && p.phase ? p.phase : "";
  return p.phase + " " + Math.floor((100 * p.bytes_written) / p.total_bytes) + "%";
}

async function refresh() {
  if (!token) return;
  try {
    const hosts = await api("GET", "/hosts");
    const rows = $("host-rows");
    rows.replaceChildren();
    const counts = {};
    for (const h of hosts) {
      counts[h.state] = (counts[h.state] || 0) + 1;
      const tr = document.createElement("tr");
      tr.dataset.host = h.name;
      tr.className = "state-" + h.operational_status + (h.name === selected ? " selected" : "");
      cell(tr, h.name);
      cell(tr, h.state);
      cell(tr, h.operational_status);
      cell(tr, h.power);
      cell(tr, h.boot_mac);
      cell(tr, h.bmc ? h.bmc.address : "");
      cell(tr, h.image ? h.image.url : "");
      cell(tr, progressText(h.progress));
      tr.addEventListener("click", () => {
        selected = h.name;
        history.replaceState(null, "", "#host=" + encodeURIComponent(selected));
        refresh();
      });
      rows.appendChild(tr);
    }
    $("empty").hidden = hosts.length > 0;
    $("summary").textContent = Object.entries(counts).map(([s, n]) => n + " " + s).join(" · ");
    if (selected) await detail(selected);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
}

async function detail(name) {
  const [h, timings, events] = await Promise.all([
    api("GET", "/hosts/" + encodeURIComponent(name)),
    api("GET", "/hosts/" + encodeURIComponent(name) + "/timings"),
    api("GET", "/hosts/" + encodeURIComponent(name) + "/events?limit=20"),
  ]);
  $("detail").hidden = false;
  $("detail-name").textContent = h.name + " — " + h.state + (h.progress ? " (" + progressText(h.progress) + ")" : "");
  $("detail-error").hidden = !h.error && !h.bmc_trouble;
  $("detail-error").textContent = h.error
    ? h.error.type + ": " + h.error.message
    : h.bmc_trouble
      ? "BMC trouble since " + h.bmc_trouble.at + ": " + h.bmc_trouble.message
      : "";
  const t = $("timings");
  t.replaceChildren();
  for (const p of timings) {
    const tr = document.createElement("tr");
    cell(tr, p.phase, p.phase.includes(".") ? "sub" : "");
    cell(tr, p.started);
    cell(tr, seconds(p.duration_ms));
    cell(tr, p.outcome);
    t.appendChild(tr);
  }
  const ev = $("events");
  ev.replaceChildren();
  for (const e of events) {
    const tr = document.createElement("tr");
    cell(tr, new Date(e.at).toISOString());
    cell(tr, e.kind);
    cell(tr, e.message);
    ev.appendChild(tr);
  }
  try {
    const inv = (await api("GET", "/hosts/" + encodeURIComponent(name) + "/inspection")).inventory;
    const disks = inv.disks.map((d) => d.name + " " + (d.size_bytes / 2 ** 30).toFixed(1) + " GiB").join(", ");
    $("hardware").textContent =
      inv.cpu.count + " × " + inv.cpu.model + " · " + inv.memory_mib + " MiB · " + disks + " · " + inv.boot_mode;
  } catch (_) {
    $("hardware").textContent = "not inspected yet";
  }
}

async function act(action) {
  if (!selected) return;
  const path = "/hosts/" + encodeURIComponent(selected);
  try {
    if (action === "inspect") await api("POST", path + "/inspect");
    if (action === "power-on") await api("POST", path + "/power", { action: "on" });
    if (action === "power-off") await api("POST", path + "/power", { action: "off" });
    if (action === "deprovision" && confirm("Deprovision " + selected + "? Its disk will be erased.")) {
      await api("POST", path + "/deprovision", {});
    }
    $("status").textContent = action + " requested";
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
  refresh();
}

function show() {
  $("login").hidden = !!token;
  $("hosts").hidden = !token;
  $("logout").hidden = !token;
  if (!token) $("detail").hidden = true;
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("kiln-token", token);
  show();
  refresh();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("kiln-token");
  token = null;
  show();
});
for (const b of document.querySelectorAll("[data-action]")) {
  b.addEventListener("click", () => act(b.dataset.action));
}
$("provision").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("POST", "/hosts/" + encodeURIComponent(selected) + "/provision", {
      image: { url: $("image-url").value.trim(), checksum: $("image-checksum").value.trim() },
    });
    $("status").textContent = "provisioning requested";
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
  refresh();
});

show();
refresh();
setInterval(refresh, 2000);
