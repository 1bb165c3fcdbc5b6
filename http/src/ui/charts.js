// kiln's pictures of time, drawn as SVG by the page itself (no library): a host's phases as a timeline, and the
// distribution of one phase's durations across the fleet. Elements are made with createElementNS and coloured by
// classes from style.css (the CSP forbids inline styles). Data in, an <svg> element out; the views place it and keep
// the same numbers in tables, so the page works without the pictures.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function node(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v != null) e.setAttribute(k, String(v));
    }
    if (parent) parent.appendChild(e);
    return e;
  }

  function label(parent, x, y, s, cls, anchor) {
    const t = node("text", { x, y, class: cls, "text-anchor": anchor || "start" }, parent);
    t.textContent = s;
    return t;
  }

  /** A hover text (SVG <title>). */
  function tip(e, s) {
    node("title", {}, e).textContent = s;
  }

  // ------------------------------------------------------------ a host's timeline

  /** States a host rests in, for any length of time: drawn at a fixed width, so the operations stay readable. */
  const RESTING = new Set(["unmanaged", "available", "provisioned", "externally provisioned", "error"]);
  /** At most this many phases (with their sub-phases) are drawn: the latest. */
  const MAX_PHASES = 40;

  function outcomeClass(rec) {
    if (rec.open) return "o-open";
    return rec.outcome === "error" ? "o-error" : "o-ok";
  }

  /**
   * `rows`: `GET /hosts/{name}/timings` (oldest first). One bar per phase on the upper lane, in sequence: operations
   * (registering, inspecting, provisioning, ...) to scale, resting states (available, provisioned, error) at a fixed
   * width marked as cut; one bar per sub-phase (`provisioning.booting`, `.running`) on the lower lane, to scale inside
   * its phase. Several boots of a host follow one another. Returns `{ svg, bars, omitted }`.
   */
  function timeline(rows, now) {
    const W = 1200;
    const GAP = 3;
    const REST_W = 78;
    const MIN_W = 4;
    const recs = rows.map((r) => {
      const start = Date.parse(r.started);
      const [base, sub] = r.phase.split(".");
      return {
        phase: r.phase,
        base,
        sub: sub || null,
        start,
        end: r.ended ? Date.parse(r.ended) : Math.max(start, now),
        open: !r.ended,
        outcome: r.outcome,
      };
    });
    const tops = recs.filter((r) => !r.sub);
    const shown = tops.slice(-MAX_PHASES);
    const subsOf = new Map(shown.map((t) => [t, []]));
    let omitted = tops.length - shown.length;
    for (const s of recs.filter((r) => r.sub)) {
      let parent = null;
      for (const t of shown) if (t.base === s.base && t.start <= s.start) parent = t;
      if (parent) {
        subsOf.get(parent).push(s);
        parent.end = Math.max(parent.end, s.end);
      } else {
        omitted += 1;
      }
    }
    const resting = shown.filter((t) => RESTING.has(t.base));
    const ops = shown.filter((t) => !RESTING.has(t.base));
    const busy = ops.reduce((a, t) => a + (t.end - t.start), 0);
    const room = Math.max(0, W - GAP * Math.max(0, shown.length - 1) - resting.length * REST_W - ops.length * MIN_W);
    const k = busy > 0 ? room / busy : 0;

    const H = 70;
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline", role: "img" });
    node("desc", {}, svg).textContent =
      shown.length + " phases of this host in sequence; resting states are drawn at a fixed width";
    let x = 0;
    let bars = 0;
    for (const t of shown) {
      const rest = RESTING.has(t.base);
      const w = rest ? REST_W : MIN_W + (t.end - t.start) * k;
      const g = node("g", { class: "phase" }, svg);
      // Positions in tenths of a unit, as integers: a sub-phase clamped inside its phase stays inside it once written
      // out (rounding each number on its own could push a sub-bar's end 0.1 past its phase's).
      const X = Math.round(x * 10);
      const WT = Math.round(w * 10);
      const rect = node(
        "rect",
        {
          x: (X / 10).toFixed(1),
          y: 16,
          width: (WT / 10).toFixed(1),
          height: 24,
          rx: 2,
          class: `bar top ${outcomeClass(t)}${rest ? " resting" : ""}${t.base === "error" ? " error-state" : ""}`,
          "data-phase": t.phase,
        },
        g,
      );
      tip(
        rect,
        `${t.phase} · ${fmtClock(t.start)} → ${t.open ? "now" : fmtClock(t.end)} · ${fmtDuration(t.end - t.start)}` +
          ` · ${t.open ? "running" : t.outcome || "ended"}`,
      );
      bars += 1;
      if (rest) {
        // The cut: this bar is not to scale.
        const mx = x + w / 2;
        node("path", { d: `M${mx - 5} 42 L${mx - 1} 14 M${mx + 1} 42 L${mx + 5} 14`, class: "cut" }, g);
      }
      const name = t.base === "externally provisioned" ? "external" : t.base;
      const words = w >= 130 ? `${name} ${fmtDuration(t.end - t.start)}` : w >= 58 ? name : "";
      if (words) label(g, x + 2, 11, words, "phase-label");
      if (rest && w >= 58) label(g, x + w / 2, 33, fmtDuration(t.end - t.start), "rest-label", "middle");
      const span = Math.max(1, t.end - t.start);
      for (const s of subsOf.get(t)) {
        // To scale inside the phase, at least 2 units wide, never past the phase's end.
        const SW = Math.min(WT, Math.max(20, Math.round(((s.end - s.start) / span) * WT)));
        const SX = Math.min(X + Math.round(((s.start - t.start) / span) * WT), X + WT - SW);
        const [sx, sw] = [SX / 10, SW / 10];
        const r = node(
          "rect",
          {
            x: sx.toFixed(1),
            y: 44,
            width: sw.toFixed(1),
            height: 16,
            rx: 2,
            class: `bar sub ${outcomeClass(s)} sub-${s.sub}`,
            "data-phase": s.phase,
          },
          g,
        );
        tip(
          r,
          `${s.phase} · ${fmtClock(s.start)} → ${s.open ? "now" : fmtClock(s.end)} · ${fmtDuration(s.end - s.start)}` +
            ` · ${s.open ? "running" : s.outcome || "ended"}`,
        );
        bars += 1;
        if (sw >= 52) label(g, sx + 3, 56, s.sub, "sub-label");
      }
      x += w + GAP;
    }
    return { svg, bars, omitted };
  }

  // ------------------------------------------------------------ the fleet's durations

  function quantile(sorted, q) {
    if (!sorted.length) return NaN;
    const pos = (sorted.length - 1) * q;
    const lo = Math.floor(pos);
    const hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }

  /** Box-plot numbers of durations (ms): quartiles, whiskers at 1.5 IQR, and the threshold above which a host is
   * slow (an outlier, and at least 20% over the median, so that near-equal durations flag nobody). */
  function stats(values) {
    const v = [...values].sort((a, b) => a - b);
    const q1 = quantile(v, 0.25);
    const median = quantile(v, 0.5);
    const q3 = quantile(v, 0.75);
    const iqr = q3 - q1;
    const slowAbove = v.length >= 4 ? Math.max(q3 + 1.5 * iqr, median * 1.2) : Infinity;
    const inside = v.filter((x) => x >= q1 - 1.5 * iqr && x <= q3 + 1.5 * iqr);
    return {
      n: v.length,
      min: v[0],
      max: v[v.length - 1],
      q1,
      median,
      q3,
      p90: quantile(v, 0.9),
      lo: inside.length ? inside[0] : v[0],
      hi: inside.length ? inside[inside.length - 1] : v[v.length - 1],
      slowAbove,
    };
  }

  /** A round axis end and step for durations up to `max` ms. */
  function axis(max) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400].map(
      (s) => s * 1000,
    );
    const step = steps.find((s) => max / s <= 6) || steps[steps.length - 1];
    return { step, end: Math.max(step, Math.ceil(max / step) * step) };
  }

  /** An axis label: `0`, `45 s`, `2m 30s`, `5m`, `2h`. */
  function tick(ms) {
    if (ms === 0) return "0";
    if (ms % 3600000 === 0) return ms / 3600000 + "h";
    if (ms % 60000 === 0) return ms / 60000 + "m";
    return fmtDuration(ms);
  }

  /** A small stable spread of dots around the box's middle, from the host name (the same host stays put). */
  function jitter(key) {
    let h = 0;
    for (const c of key) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return ((h % 17) - 8) * 1.6;
  }

  /**
   * `series`: `[{ name, samples: [{ host, duration_ms, outcome, ended }] }]`, one row each: a box plot (quartiles,
   * median, whiskers at 1.5 IQR) over every sample as a dot; slow hosts are drawn apart and named. `onPick(host)`
   * runs on a click on a dot. Returns `{ svg, dots }`.
   */
  function distribution(series, onPick) {
    const W = 980;
    const LEFT = 190;
    const RIGHT = 34;
    const ROW = 54;
    const AXIS = 22;
    const H = series.length * (ROW + AXIS);
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, class: "distribution", role: "img" });
    let dots = 0;
    series.forEach((sr, i) => {
      const y0 = i * (ROW + AXIS);
      const mid = y0 + ROW / 2 + 4;
      const g = node("g", { class: "series", "data-phase": sr.name }, svg);
      label(g, 0, mid - 6, sr.name, "series-name");
      const values = sr.samples.map((s) => s.duration_ms);
      if (!values.length) {
        label(g, 0, mid + 12, "nothing finished yet", "series-note");
        return;
      }
      const st = stats(values);
      label(g, 0, mid + 10, `n=${st.n} · median ${fmtDuration(st.median)}`, "series-note");
      label(g, 0, mid + 25, `p90 ${fmtDuration(st.p90)} · max ${fmtDuration(st.max)}`, "series-note");
      const ax = axis(st.max);
      const sx = (ms) => LEFT + (ms / ax.end) * (W - LEFT - RIGHT);
      for (let t = 0; t <= ax.end + 1; t += ax.step) {
        node("line", { x1: sx(t), x2: sx(t), y1: y0 + 4, y2: y0 + ROW, class: "grid" }, g);
        label(g, sx(t), y0 + ROW + 14, tick(t), "tick", "middle");
      }
      node("line", { x1: sx(st.lo), x2: sx(st.hi), y1: mid, y2: mid, class: "whisker" }, g);
      for (const w of [st.lo, st.hi]) node("line", { x1: sx(w), x2: sx(w), y1: mid - 8, y2: mid + 8, class: "whisker" }, g);
      const box = node(
        "rect",
        { x: sx(st.q1), y: mid - 14, width: Math.max(1, sx(st.q3) - sx(st.q1)), height: 28, class: "box" },
        g,
      );
      tip(box, `${sr.name}: quartiles ${fmtDuration(st.q1)} – ${fmtDuration(st.q3)}, median ${fmtDuration(st.median)}`);
      node("line", { x1: sx(st.median), x2: sx(st.median), y1: mid - 14, y2: mid + 14, class: "median" }, g);
      const slow = [];
      for (const s of sr.samples) {
        const isSlow = s.duration_ms > st.slowAbove;
        const c = node(
          "circle",
          {
            cx: sx(s.duration_ms).toFixed(1),
            cy: (mid + jitter(s.host + s.ended)).toFixed(1),
            r: isSlow ? 5 : 3.5,
            class: `dot${isSlow ? " slow" : ""}${s.outcome === "error" ? " failed" : ""}`,
            "data-host": s.host,
            tabindex: 0,
          },
          g,
        );
        tip(
          c,
          `${s.host}: ${fmtDuration(s.duration_ms)}${s.outcome === "error" ? " (failed)" : ""}, ended ${fmtClock(s.ended)}` +
            (isSlow ? " — slow" : ""),
        );
        if (onPick) {
          c.addEventListener("click", () => onPick(s.host));
          c.addEventListener("keydown", (ev) => ev.key === "Enter" && onPick(s.host));
        }
        if (isSlow) slow.push(s);
        dots += 1;
      }
      slow.sort((a, b) => b.duration_ms - a.duration_ms);
      for (const s of slow.slice(0, 6)) {
        label(g, sx(s.duration_ms), mid - 20, s.host, "slow-label", "middle");
      }
    });
    return { svg, dots };
  }

  return { timeline, distribution, stats };
})();
