// The enroll form: builds `POST /api/v1/hosts` from the fields and shows the API's message next to the field the
// answer names (`field` of a 422 or 409 body). "Check" sends the same body as a dry run, which writes nothing. The
// BMC password is only ever in its input: it is sent, never shown back, and cleared once the host is enrolled.
// Below it, pasted Metal3 manifests go to `POST /api/v1/import` as they are (the server parses the YAML): every
// refusal is listed with its document and field, and nothing is enrolled unless all can be.
"use strict";

const Enroll = (() => {
  const form = () => $("enroll-form");
  const input = (name) => form().elements.namedItem(name);
  const value = (name) => input(name).value.trim();
  const HINTS = ["deviceName", "serialNumber", "model", "vendor", "wwn", "hctl"];

  /** A field of the form that is wrong before anything is sent. */
  class FieldError extends Error {
    constructor(field, message) {
      super(message);
      this.field = field;
    }
  }

  /** `rack=r1, role=worker` as an object. */
  function parseLabels(text) {
    const labels = {};
    for (const part of text.split(",")) {
      const t = part.trim();
      if (!t) continue;
      const i = t.indexOf("=");
      if (i <= 0) throw new FieldError("labels", `write each label as key=value (got ${JSON.stringify(t)})`);
      labels[t.slice(0, i).trim()] = t.slice(i + 1).trim();
    }
    return labels;
  }

  /** The request body (`HostCreate`), from the fields that are filled in. */
  function body() {
    const b = { name: value("name") };
    const address = value("bmc_address");
    const username = value("bmc_username");
    const password = input("bmc_password").value;
    if (address || username || password) {
      b.bmc = { address, username, password };
      if (input("bmc_insecure").checked) b.bmc.disable_certificate_verification = true;
      if (value("bmc_ca")) b.bmc.ca_cert = value("bmc_ca");
    }
    if (value("boot_mac")) b.boot_mac = value("boot_mac");
    b.boot_mode = value("boot_mode");
    const labels = parseLabels(value("labels"));
    if (Object.keys(labels).length) b.labels = labels;
    const hints = {};
    for (const k of HINTS) if (value(k)) hints[k] = value(k);
    if (value("minSizeGigabytes")) {
      const n = Number(value("minSizeGigabytes"));
      if (!Number.isInteger(n) || n < 0) throw new FieldError("minSizeGigabytes", "a whole number of gigabytes");
      hints.minSizeGigabytes = n;
    }
    if (value("rotational")) hints.rotational = value("rotational") === "true";
    if (Object.keys(hints).length) b.root_device_hints = hints;
    b.options = { inspect: input("inspect").checked, externally_provisioned: input("externally_provisioned").checked };
    return b;
  }

  function clearErrors() {
    for (const p of form().querySelectorAll(".field-error")) {
      p.hidden = true;
      p.textContent = "";
    }
    for (const i of form().querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
    $("enroll-done").hidden = true;
  }

  /** Shows `message` next to the field the API named (`bmc.address`, `root_device_hints`, ...), or above the form
   * when no field of the form is that one. */
  function showError(field, message) {
    const mark = field && form().querySelector(`.field-error[data-error-for="${CSS.escape(field)}"]`);
    const target = mark || $("enroll-error");
    target.textContent = mark || !field ? message : `${field}: ${message}`;
    target.hidden = false;
    const control = field && form().querySelector(`[data-field="${CSS.escape(field)}"]`);
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  }

  async function send(dryRun) {
    clearErrors();
    let b;
    try {
      b = body();
    } catch (e) {
      showError(e.field, e.message);
      return;
    }
    const button = dryRun ? $("enroll-check") : $("enroll-submit");
    button.disabled = true;
    try {
      const h = await api("POST", "/hosts" + (dryRun ? "?dry_run=true" : ""), b);
      const done = $("enroll-done");
      if (dryRun) {
        done.replaceChildren(`${h.name} can be enrolled: the fields are valid and nothing conflicts (nothing was written).`);
      } else {
        done.replaceChildren(hostLink(h.name), ` enrolled; kiln registers it now. The form is ready for the next host.`);
        // The password goes with the host it was typed for; the fields a batch shares stay.
        for (const n of ["name", "boot_mac", "bmc_address", "bmc_password", "bmc_ca", ...HINTS, "minSizeGigabytes"]) {
          input(n).value = "";
        }
        setStatus(`${h.name} enrolled`);
        refresh();
      }
      done.hidden = false;
    } catch (e) {
      showError(e.field, e.message);
    } finally {
      button.disabled = false;
    }
  }

  /** Sends the pasted manifests to the import route (a dry run with `dryRun`) and shows what happened to each
   * host, or every refusal. */
  async function importManifests(dryRun) {
    const [done, error, refused] = [$("import-done"), $("import-error"), $("import-refused")];
    done.hidden = error.hidden = refused.hidden = true;
    const text = $("import-yaml");
    const fail = (message) => {
      error.textContent = message;
      error.hidden = false;
    };
    if (!text.value.trim()) {
      fail("Paste one or more BareMetalHost manifests first.");
      return;
    }
    const button = dryRun ? $("import-check") : $("import-submit");
    button.disabled = true;
    try {
      const r = await fetch("/api/v1/import" + (dryRun ? "?dry_run=true" : ""), {
        method: "POST",
        headers: { Authorization: "Bearer " + Kiln.token, "Content-Type": "application/yaml" },
        body: text.value,
        cache: "no-store",
      });
      const data = await r.json().catch(() => null);
      if (r.status === 401) {
        forgetToken();
        fail("the token was refused");
        return;
      }
      if (data && Array.isArray(data.refused) && data.refused.length) {
        fail(`Nothing was imported: ${data.refused.length} refused.`);
        refused.replaceChildren(
          ...data.refused.map((x) => el("li", {}, el("strong", {}, x.document), ` ${x.field}: ${x.error}`)),
        );
        refused.hidden = false;
        return;
      }
      if (!r.ok) {
        fail(((data && data.field) ? data.field + ": " : "") + ((data && data.error) || r.statusText));
        return;
      }
      const items = data.hosts.map((h) =>
        el("li", {}, dryRun ? h.name : hostLink(h.name), ` ${dryRun ? "would be " : ""}${h.outcome}`),
      );
      done.replaceChildren(
        dryRun ? "Every document is valid and nothing conflicts (nothing was written):" : "Imported:",
        el("ul", {}, ...items),
      );
      done.hidden = false;
      if (!dryRun) {
        // The manifests hold BMC passwords: they leave the page once kiln has them.
        text.value = "";
        setStatus(`${data.hosts.length} hosts imported`);
        refresh();
      }
    } catch (e) {
      fail(e.message);
    } finally {
      button.disabled = false;
    }
  }

  /** Called when the enroll view opens. */
  function open() {
    $("enroll-done").hidden = true;
  }

  function init() {
    form().addEventListener("submit", (ev) => {
      ev.preventDefault();
      send(false);
    });
    $("enroll-check").addEventListener("click", () => send(true));
    $("import-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      importManifests(false);
    });
    $("import-check").addEventListener("click", () => importManifests(true));
  }

  return { init, open, parseLabels };
})();
