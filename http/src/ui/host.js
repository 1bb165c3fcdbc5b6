// A host's page: its facts, error, write progress, the timeline of its phases (charts.js) with the same numbers in a
// table, hardware and events; and the operator's actions, with a confirmation dialog before the destructive ones
// (deprovision erases the disk, delete forgets the host).
"use strict";

const HostView = (() => {
  let current = null;

  function fact(dl, term, value, cls) {
    if (value == null || value === "") return;
    const dd = el("dd", { class: cls, title: String(value) }, String(value));
    dl.append(el("dt", null, term), dd);
  }

  function hints(h) {
    return Object.entries(h.root_device_hints || {})
      .map(([k, v]) => k + "=" + v)
      .join(", ");
  }

  function renderHost(h) {
    current = h;
    const status = h.operational_status === "ok" || h.operational_status === h.state ? "" : ` (${h.operational_status})`;
    $("host-name").textContent = `${h.name} — ${h.state}${status}`;
    const err = $("host-error");
    err.hidden = !h.error && !h.bmc_trouble;
    err.textContent = h.error
      ? `${h.error.type} (${h.error.kind}): ${h.error.message}`
      : h.bmc_trouble
        ? `BMC trouble since ${fmtClock(h.bmc_trouble.at)}: ${h.bmc_trouble.message}`
        : "";
    const dl = $("host-facts");
    dl.replaceChildren();
    fact(dl, "Power", h.power || "unknown");
    fact(dl, "Boot MAC", h.boot_mac);
    fact(dl, "Boot mode", h.boot_mode);
    if (h.bmc) {
      fact(dl, "BMC", h.bmc.address, "elide");
      fact(dl, "BMC user", h.bmc.username);
      fact(dl, "Boots by", h.bmc.boot_method);
    }
    fact(dl, "Image", h.image ? h.image.url : "none", "elide");
    fact(
      dl,
      "Labels",
      Object.entries(h.labels || {})
        .map(([k, v]) => k + "=" + v)
        .join(", ") || "none",
    );
    fact(dl, "Root device", hints(h) || "the first suitable disk");
    fact(
      dl,
      "Options",
      [
        h.options.inspect ? "inspect" : "no inspection",
        h.options.externally_provisioned ? "externally provisioned" : null,
        "erase " + h.options.erase,
        h.options.prepare ? "prepare" : null,
        h.options.online == null ? null : h.options.online ? "kept on" : "kept off",
      ]
        .filter(Boolean)
        .join(", "),
    );
    fact(dl, "Counters", `${h.counters.boots} boots · ${h.counters.deploys} deploys · ${h.counters.errors} errors`);
    fact(dl, "Enrolled", fmtClock(h.created));
    const box = $("host-progress");
    box.hidden = !h.progress;
    if (h.progress) {
      Progress.sample(h.name, h.progress, Date.now());
      const p = Progress.view(h.name, h.progress);
      box.replaceChildren(el("div", { class: "progress-line" }, p.bar, el("span", { class: "num" }, p.text)));
    }
  }

  function renderTimings(timings) {
    const box = $("timeline");
    try {
      const t = Charts.timeline(timings, Date.now());
      const note = t.omitted
        ? el("p", { class: "hint" }, `${t.omitted} earlier phases are not drawn; the table has them all.`)
        : null;
      box.replaceChildren(t.svg, ...(note ? [note] : []));
    } catch (e) {
      box.replaceChildren(el("p", { class: "hint" }, "timeline unavailable: " + e.message));
    }
    $("timings").replaceChildren(
      ...timings.map((p) => {
        const tr = el("tr", { class: "o-" + (p.outcome || "open") });
        cell(tr, p.phase, p.phase.includes(".") ? "sub" : "");
        cell(tr, fmtClock(p.started));
        cell(tr, p.duration_ms == null ? "running" : fmtDuration(p.duration_ms));
        cell(tr, p.outcome || "");
        return tr;
      }),
    );
  }

  function renderEvents(events) {
    $("events").replaceChildren(
      ...events
        .slice()
        .reverse()
        .map((e) => {
          const tr = el("tr");
          cell(tr, fmtClock(e.at));
          cell(tr, e.kind);
          cell(tr, e.message, "message");
          return tr;
        }),
    );
  }

  async function refresh(name) {
    let h;
    try {
      h = await api("GET", hostPath(name));
    } catch (e) {
      if (e.status !== 404) throw e;
      current = null;
      $("host-name").textContent = `${name} — no such host (deleted?)`;
      for (const id of ["host-facts", "timeline", "timings", "events"]) $(id).replaceChildren();
      $("host-error").hidden = true;
      $("host-progress").hidden = true;
      return;
    }
    const [timings, events] = await Promise.all([
      api("GET", hostPath(name) + "/timings"),
      api("GET", hostPath(name) + "/events?limit=30"),
    ]);
    if (Kiln.route.host !== name) return; // the user moved on meanwhile
    renderHost(h);
    renderTimings(timings);
    renderEvents(events);
    try {
      const inv = (await api("GET", hostPath(name) + "/inspection")).inventory;
      const disks = (inv.disks || []).map((d) => d.name + " " + (d.size_bytes / 2 ** 30).toFixed(1) + " GiB").join(", ");
      $("hardware").textContent = `${inv.cpu.count} × ${inv.cpu.model} · ${inv.memory_mib} MiB · ${disks} · ${inv.boot_mode}`;
    } catch (_) {
      $("hardware").textContent = "not inspected yet";
    }
  }

  async function act(action) {
    const name = Kiln.route.host;
    if (!name) return;
    const path = hostPath(name);
    try {
      if (action === "inspect") await api("POST", path + "/inspect");
      if (action === "power-on") await api("POST", path + "/power", { action: "on" });
      if (action === "power-off") await api("POST", path + "/power", { action: "off" });
      if (action === "deprovision") {
        const image = current && current.image ? current.image.url : "its image";
        const a = await confirmDialog({
          title: `Deprovision ${name}?`,
          text: `kiln removes ${image} from ${name}, erases its disks as chosen below and makes it available again.`,
          ok: `Deprovision ${name}`,
          erase: true,
        });
        if (!a.ok) return setStatus("deprovision cancelled");
        await api("POST", path + "/deprovision", a.erase ? { erase: a.erase } : {});
      }
      if (action === "delete") {
        const a = await confirmDialog({
          title: `Delete ${name}?`,
          text: `kiln powers ${name} off and forgets it, with its timings and events. Enroll it again to manage it.`,
          ok: `Delete ${name}`,
        });
        if (!a.ok) return setStatus("delete cancelled");
        await api("DELETE", path);
      }
      setStatus(`${action} of ${name} requested`);
    } catch (e) {
      setStatus("error: " + e.message, true);
    }
    refresh(name).catch((e) => setStatus("error: " + e.message, true));
  }

  function init() {
    for (const b of document.querySelectorAll("#host [data-action]")) {
      b.addEventListener("click", () => act(b.dataset.action));
    }
    $("provision").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = Kiln.route.host;
      try {
        await api("POST", hostPath(name) + "/provision", {
          image: { url: $("image-url").value.trim(), checksum: $("image-checksum").value.trim() },
        });
        setStatus(`provisioning of ${name} requested`);
      } catch (e) {
        setStatus("error: " + (e.field ? e.field + ": " : "") + e.message, true);
      }
      refresh(name).catch((e) => setStatus("error: " + e.message, true));
    });
  }

  return { init, refresh };
})();
