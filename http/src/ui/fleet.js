// The fleet page, the first thing /ui shows: hosts per state and per operational status, the hosts in error with the
// first line of the reason and the phase that failed, the hosts writing with live progress (bytes, rate, ETA), the
// queue of delayed hosts, the fleet's inspection and provisioning durations, and the host table (filters by label,
// state and text; sortable columns). It reads only; actions are on a host's page.
"use strict";

const Fleet = (() => {
  /** Metal3's states in lifecycle order. */
  const STATES = [
    "unmanaged",
    "registering",
    "inspecting",
    "preparing",
    "available",
    "provisioning",
    "provisioned",
    "deprovisioning",
    "externally provisioned",
    "deleting",
    "error",
  ];
  const STATUSES = ["ok", "delayed", "error"];
  /** The phase an error type's operation ran in, when the timings do not say more. */
  const OPERATION_PHASE = {
    "registration error": "registering",
    "inspection error": "inspecting",
    "preparation error": "preparing",
    "provisioning error": "provisioning",
    "deprovisioning error": "deprovisioning",
  };
  const DURATION_PHASES = ["inspecting", "provisioning"];
  const DURATION_LIMIT = 200;
  const DURATIONS_EVERY_MS = 15000;
  /** Per refresh: host reads for write progress, timing reads for the phase a host failed in. */
  const MAX_PROGRESS_READS = 32;
  const MAX_FAILURE_READS = 8;

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const sort = { key: "name", dir: 1 };
  /** The job hosts' latest `GET /hosts/{name}` (for `progress`), by name. */
  const running = new Map();
  /** host -> { at, phase }: the phase an error happened in, read once per error. */
  const failedIn = new Map();
  let durations = null;
  let durationsAt = 0;
  let durationsError = null;
  let shown = [];

  const isRunning = (h) => h.detail && h.detail.phase === "running";
  const labelsText = (h) =>
    Object.entries(h.labels || {})
      .map(([k, v]) => k + "=" + v)
      .join(", ");

  // ------------------------------------------------------------ reading

  async function readProgress(hosts) {
    const want = hosts.filter(isRunning).slice(0, MAX_PROGRESS_READS);
    const now = Date.now();
    const got = await Promise.all(want.map((h) => api("GET", hostPath(h.name)).catch(() => null)));
    running.clear();
    for (const h of got) {
      if (!h) continue;
      running.set(h.name, h);
      if (h.progress) Progress.sample(h.name, h.progress, now);
    }
    Progress.keep(new Set([...running.values()].filter((h) => h.progress).map((h) => h.name)));
  }

  /** The deepest phase that ended in error (a sub-phase such as `inspecting.booting` if there is one). */
  async function readFailures(hosts) {
    const errors = hosts.filter((h) => h.error);
    for (const name of [...failedIn.keys()]) if (!errors.some((h) => h.name === name)) failedIn.delete(name);
    const stale = errors.filter((h) => (failedIn.get(h.name) || {}).at !== h.error.at).slice(0, MAX_FAILURE_READS);
    await Promise.all(
      stale.map(async (h) => {
        try {
          const rows = await api("GET", hostPath(h.name) + "/timings");
          const last = rows.filter((r) => r.outcome === "error").pop();
          failedIn.set(h.name, { at: h.error.at, phase: last ? last.phase : null });
        } catch (_) {
          // The host's timings are unavailable just now: the error type names the operation meanwhile.
        }
      }),
    );
  }

  async function readDurations(force) {
    if (!force && durations && Date.now() - durationsAt < DURATIONS_EVERY_MS) return;
    durationsAt = Date.now();
    try {
      const got = await Promise.all(
        DURATION_PHASES.map((p) => api("GET", `/timings?phase=${p}&limit=${DURATION_LIMIT}`)),
      );
      durations = DURATION_PHASES.map((name, i) => ({ name, samples: got[i] }));
      durationsError = null;
    } catch (e) {
      durationsError = e.message;
    }
  }

  async function refresh(hosts) {
    await Promise.all([readProgress(hosts), readFailures(hosts), readDurations(false)]);
    render(hosts);
  }

  // ------------------------------------------------------------ drawing

  function tile(key, n, word, cls) {
    const b = el(
      "button",
      {
        type: "button",
        class: "tile " + cls + (n === 0 ? " zero" : ""),
        data: { count: key },
        title: "show only these hosts",
        onclick: () => {
          const f = $("filter-state");
          f.value = f.value === key ? "" : key;
          render(Kiln.hosts);
        },
      },
      el("span", { class: "n" }, String(n)),
      el("span", { class: "word" }, word),
    );
    b.setAttribute("aria-pressed", String($("filter-state").value === key));
    return b;
  }

  function renderCounts(hosts) {
    const byState = {};
    const byStatus = {};
    for (const h of hosts) {
      byState[h.state] = (byState[h.state] || 0) + 1;
      byStatus[h.operational_status] = (byStatus[h.operational_status] || 0) + 1;
    }
    const states = [...STATES, ...Object.keys(byState).filter((s) => !STATES.includes(s))];
    $("state-counts").replaceChildren(
      el("span", { class: "tile total", data: { count: "total" } }, el("span", { class: "n" }, String(hosts.length)), el("span", { class: "word" }, "hosts")),
      ...states.filter((s) => byState[s]).map((s) => tile("state:" + s, byState[s], s, "st-" + s.replace(/ /g, "-"))),
    );
    $("status-counts").replaceChildren(
      el("span", { class: "tiles-title" }, "operational status"),
      ...STATUSES.map((s) => tile("status:" + s, byStatus[s] || 0, s, "os-" + s)),
    );
  }

  function renderErrors(hosts) {
    const errors = hosts.filter((h) => h.error).sort((a, b) => b.error.at.localeCompare(a.error.at));
    $("errors-count").textContent = errors.length ? String(errors.length) : "";
    $("errors-none").hidden = errors.length > 0;
    $("errors").replaceChildren(
      ...errors.map((h) => {
        const e = h.error;
        const known = failedIn.get(h.name);
        const phase = (known && known.phase) || OPERATION_PHASE[e.type] || e.type;
        const reason = firstLine(e.message);
        return el(
          "li",
          { class: "item", data: { host: h.name } },
          el(
            "div",
            { class: "line" },
            hostLink(h.name),
            el("span", { class: "badge bad" }, e.type),
            el("span", null, "failed in "),
            el("code", { class: "failed-phase" }, phase),
            el("span", { class: "kind" }, e.kind),
          ),
          el("div", { class: "reason", title: e.message }, reason),
          el(
            "div",
            { class: "hint" },
            `${fmtClock(e.at)} · ${plural(e.retries, "retry", "retries")} made · ` +
              (e.retry_at ? "kiln retries at " + fmtClock(e.retry_at) : "no more automatic retries: inspect, provision or deprovision it"),
          ),
        );
      }),
    );
  }

  function renderWriting() {
    const items = [...running.values()]
      .filter((h) => h.progress || h.state === "provisioning" || h.state === "deprovisioning")
      .sort((a, b) => collator.compare(a.name, b.name));
    $("writing-count").textContent = items.length ? String(items.length) : "";
    $("writing-none").hidden = items.length > 0;
    $("writing").replaceChildren(
      ...items.map((h) => {
        const li = el("li", { class: "item", data: { host: h.name } });
        li.append(el("div", { class: "line" }, hostLink(h.name), el("span", { class: "badge" }, h.state)));
        if (h.progress) {
          const p = Progress.view(h.name, h.progress);
          li.append(el("div", { class: "progress-line" }, p.bar), el("div", { class: "num" }, p.text));
        } else {
          li.append(el("div", { class: "hint" }, "the agent runs its command; no progress reported yet"));
        }
        if (h.image && h.state === "provisioning") li.append(el("div", { class: "hint elide", title: h.image.url }, h.image.url));
        return li;
      }),
    );
  }

  function renderQueue(hosts) {
    const now = Date.now();
    const queue = hosts
      .filter((h) => h.operational_status === "delayed")
      .sort((a, b) => ((a.detail && a.detail.started) || 0) - ((b.detail && b.detail.started) || 0));
    $("queue-count").textContent = queue.length ? String(queue.length) : "";
    $("queue-none").hidden = queue.length > 0;
    $("queue").replaceChildren(
      ...queue.map((h) => {
        const since = h.detail && h.detail.phase_since;
        return el(
          "li",
          { class: "item", data: { host: h.name } },
          hostLink(h.name),
          el("span", { class: "badge" }, h.state),
          el("span", { class: "hint" }, since ? "waiting " + fmtDuration(now - since) : "waiting"),
        );
      }),
    );
  }

  function renderDurations() {
    const box = $("durations");
    if (durationsError) {
      $("durations-note").textContent = "";
      box.replaceChildren(el("p", { class: "hint" }, "durations unavailable: " + durationsError));
      return;
    }
    if (!durations) return;
    $("durations-note").textContent = `— the last ${DURATION_LIMIT} finished inspections and provisionings; a dot per host, slow ones named`;
    const summary = el("table", { class: "compact durations-table" });
    summary.append(
      el("thead", null, el("tr", null, ...["Phase", "Finished", "Median", "p90", "Slowest"].map((t) => el("th", null, t)))),
    );
    const body = el("tbody");
    for (const s of durations) {
      const tr = el("tr", { data: { phase: s.name } });
      if (s.samples.length) {
        const st = Charts.stats(s.samples.map((x) => x.duration_ms));
        const slowest = s.samples.reduce((a, b) => (b.duration_ms > a.duration_ms ? b : a));
        tr.append(
          el("td", null, s.name),
          el("td", null, String(st.n)),
          el("td", null, fmtDuration(st.median)),
          el("td", null, fmtDuration(st.p90)),
          el("td", null, hostLink(slowest.host), " " + fmtDuration(slowest.duration_ms)),
        );
      } else {
        tr.append(el("td", null, s.name), el("td", null, "0"), el("td"), el("td"), el("td"));
      }
      body.append(tr);
    }
    summary.append(body);
    const parts = [];
    try {
      parts.push(Charts.distribution(durations, (host) => go("#host=" + encodeURIComponent(host))).svg);
    } catch (e) {
      parts.push(el("p", { class: "hint" }, "chart unavailable: " + e.message));
    }
    box.replaceChildren(...parts, summary);
  }

  // ------------------------------------------------------------ the table

  const COLUMNS = {
    name: (h) => h.name,
    state: (h) => h.state,
    status: (h) => h.operational_status,
    power: (h) => h.power,
    mac: (h) => h.boot_mac,
    bmc: (h) => h.bmc && h.bmc.address,
    image: (h) => h.image && h.image.url,
    labels: (h) => labelsText(h),
    progress: (h) => {
      const r = running.get(h.name);
      const p = r && r.progress;
      return p && p.total_bytes ? p.bytes_written / p.total_bytes : null;
    },
  };

  /** `k=v,k2=v2,k3`: every term must hold (`k3`: the label exists). */
  function parseSelector(text) {
    const terms = [];
    for (const part of text.split(",")) {
      const t = part.trim();
      if (!t) continue;
      const i = t.indexOf("=");
      const k = (i < 0 ? t : t.slice(0, i)).trim();
      if (!k) throw new Error(`label term ${JSON.stringify(t)} has no key`);
      terms.push({ k, v: i < 0 ? null : t.slice(i + 1).trim() });
    }
    return terms;
  }

  function filtered(hosts) {
    $("filter-note").textContent = "";
    $("filter-label").classList.remove("invalid");
    let terms = [];
    try {
      terms = parseSelector($("filter-label").value);
    } catch (e) {
      $("filter-note").textContent = e.message;
      $("filter-label").classList.add("invalid");
    }
    const [kind, value] = $("filter-state").value.split(":");
    const words = $("filter-text").value.toLowerCase().split(/\s+/).filter(Boolean);
    return hosts.filter((h) => {
      if (kind === "state" && h.state !== value) return false;
      if (kind === "status" && h.operational_status !== value) return false;
      const labels = h.labels || {};
      if (!terms.every(({ k, v }) => (v == null ? k in labels : labels[k] === v))) return false;
      if (!words.length) return true;
      const hay = [
        h.name,
        h.state,
        h.operational_status,
        h.power,
        h.boot_mac,
        h.bmc && h.bmc.address,
        h.image && h.image.url,
        labelsText(h),
        h.error && h.error.kind,
        h.error && h.error.message,
      ]
        .filter(Boolean)
        .join(" ")
        .toLowerCase();
      return words.every((w) => hay.includes(w));
    });
  }

  function sorted(hosts) {
    const key = COLUMNS[sort.key];
    return [...hosts].sort((a, b) => {
      const x = key(a);
      const y = key(b);
      if (x == null && y == null) return collator.compare(a.name, b.name);
      if (x == null) return 1; // unknown values last, whichever the direction
      if (y == null) return -1;
      const c = typeof x === "number" && typeof y === "number" ? x - y : collator.compare(String(x), String(y));
      return sort.dir * (c || collator.compare(a.name, b.name));
    });
  }

  function progressCell(tr, h) {
    const r = running.get(h.name);
    const td = el("td", { class: "progress" });
    if (r && r.progress) {
      const p = Progress.view(h.name, r.progress);
      td.append(p.bar, el("span", { class: "num" }, p.fraction == null ? r.progress.phase : Math.floor(100 * p.fraction) + "%"));
      td.title = p.text;
    } else if (h.detail && h.detail.phase) {
      td.append(h.detail.phase);
      td.title = `${h.state}.${h.detail.phase}`;
    }
    tr.appendChild(td);
  }

  function renderTable(hosts) {
    shown = sorted(filtered(hosts));
    const rows = $("host-rows");
    rows.replaceChildren(
      ...shown.map((h) => {
        const tr = el("tr", {
          class: "os-" + h.operational_status,
          data: { host: h.name },
          onclick: (ev) => {
            if (!ev.target.closest("a")) go("#host=" + encodeURIComponent(h.name));
          },
        });
        const name = el("td", { class: "name", title: h.name }, hostLink(h.name));
        tr.appendChild(name);
        cell(tr, h.state, "state st-" + h.state.replace(/ /g, "-"));
        cell(tr, h.operational_status, "status");
        cell(tr, h.power, "power");
        cell(tr, h.boot_mac, "mac");
        cell(tr, h.bmc ? h.bmc.address : "", "bmc");
        cell(tr, h.image ? h.image.url : "", "image");
        cell(tr, labelsText(h), "labels");
        progressCell(tr, h);
        return tr;
      }),
    );
    for (const th of document.querySelectorAll("#host-table th[data-sort]")) {
      th.setAttribute("aria-sort", th.dataset.sort === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none");
    }
    $("empty").hidden = hosts.length > 0;
    const hidden = hosts.length - shown.length;
    if (hidden > 0 && !$("filter-note").textContent) $("filter-note").textContent = `${shown.length} of ${hosts.length} hosts shown`;
  }

  function render(hosts) {
    renderCounts(hosts);
    renderErrors(hosts);
    renderWriting();
    renderQueue(hosts);
    renderDurations();
    renderTable(hosts);
  }

  function init() {
    const select = $("filter-state");
    select.append(
      el("optgroup", { label: "state" }, ...STATES.map((s) => el("option", { value: "state:" + s }, s))),
      el("optgroup", { label: "operational status" }, ...STATUSES.map((s) => el("option", { value: "status:" + s }, s))),
    );
    for (const id of ["filter-text", "filter-label", "filter-state"]) {
      $(id).addEventListener("input", () => render(Kiln.hosts));
    }
    $("filters").addEventListener("submit", (ev) => ev.preventDefault());
    for (const th of document.querySelectorAll("#host-table th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        if (sort.key === th.dataset.sort) sort.dir = -sort.dir;
        else {
          sort.key = th.dataset.sort;
          sort.dir = 1;
        }
        renderTable(Kiln.hosts);
      });
    }
  }

  return { init, refresh, parseSelector };
})();
