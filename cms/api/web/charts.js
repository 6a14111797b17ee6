// Time-series charts: uPlot (vendored from npm, see scripts/web-assets.sh) over the frames the
// history API returns: one shared time axis `ts` and one value (or null) per point per series.
//
// A canvas cannot be read back, so each chart also writes what it shows into the DOM: a legend
// with every series' latest value and unit, and data- attributes on the chart element
// (data-points: points with a value; data-latest-<key>: each series' latest value), which
// is what people with screen readers and the browser tests read.

import { h, replace } from "./ui.js";

let uPlot = null;
let loadError = "";
try {
  uPlot = (await import("./vendor/uPlot.esm.js")).default;
} catch (e) {
  loadError = "the charting library is missing on the server (run scripts/web-assets.sh)";
}

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                 "#4b5563", "#65a30d"];

export const UNITS = {
  pct: { axis: (v) => `${Math.round(v * 100)} %`, text: (v) => `${(v * 100).toFixed(1)} %` },
  mib: { axis: (v) => (v >= 1024 ? `${+(v / 1024).toFixed(1)} GiB` : `${Math.round(v)} MiB`), text: (v) => `${Math.round(v)} MiB` },
  count: { axis: (v) => `${+v.toFixed(1)}`, text: (v) => `${+v.toFixed(2)}` },
};

// The series' value now: its last point, if that is one of the last RECENT points (a VM that
// left the host or stopped shows "no recent data", not its last figure from minutes ago).
const RECENT = 3;
function latest(values) {
  for (let i = values.length - 1; i >= Math.max(0, values.length - RECENT); i--) {
    if (values[i] !== null && values[i] !== undefined) return values[i];
  }
  return null;
}

// Draws each marker (a scaling decision, a failure) as a dashed vertical line.
function markerPlugin(getMarkers) {
  return {
    hooks: {
      draw: [(u) => {
        const ms = getMarkers();
        if (!ms.length) return;
        const { ctx } = u;
        const { top, height } = u.bbox;
        ctx.save();
        ctx.setLineDash([4, 4]);
        ctx.lineWidth = 1.5 * devicePixelRatio;
        for (const m of ms) {
          const x = Math.round(u.valToPos(m.ts, "x", true));
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.strokeStyle = m.kind.includes("fail") ? "#dc2626" : "#9333ea";
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
}

// A chart with a title, a unit, and series given as [{key, label, values}] per update.
export class TimeChart {
  constructor({ id, title, unit = "pct", height = 180, yMax = null }) {
    this.id = id;
    this.unit = UNITS[unit];
    this.unitName = unit;
    this.height = height;
    this.yMax = yMax;
    this.plot = null;
    this.keys = "";
    this.markers = [];
    this.canvas = h("div", { class: "chart-canvas" });
    this.legend = h("ul", { class: "legend", "aria-label": `${title}: latest values` });
    this.note = h("p", { class: "chart-note muted" });
    this.el = h("figure", { class: "chart", id, dataset: { points: 0, unit } },
      h("figcaption", {}, title), this.canvas, this.legend, this.note);
    this.resizer = new ResizeObserver(() => this.fit());
    this.resizer.observe(this.canvas);
  }

  width() { return Math.max(240, Math.floor(this.canvas.clientWidth || this.el.clientWidth || 600)); }

  fit() {
    if (this.plot) {
      const w = this.width();
      if (Math.abs(w - this.plot.width) > 2) this.plot.setSize({ width: w, height: this.height });
    }
  }

  // frame: {ts: [...], step}; series: [{key, label, values, dash?, color?}]; markers: [{ts, kind}]
  update(ts, series, markers = []) {
    this.markers = markers;
    const points = series.length ? series[0].values.filter((v) => v !== null && v !== undefined).length : 0;
    this.el.dataset.points = points;
    for (const k of Object.keys(this.el.dataset)) if (k.startsWith("latest")) delete this.el.dataset[k];
    replace(this.legend, series.map((s, i) => {
      const v = latest(s.values);
      this.el.dataset[`latest${s.key.replace(/(^|[-_])(\w)/g, (_, _d, c) => c.toUpperCase())}`] = v === null ? "" : v;
      return h("li", { dataset: { key: s.key, latest: v === null ? "" : v } },
        h("span", { class: "swatch", style: `background:${s.color || PALETTE[i % PALETTE.length]}` }),
        `${s.label}: `, h("strong", {}, v === null ? "no recent data" : this.unit.text(v)));
    }));
    this.note.textContent = points ? "" : "No samples in this range yet.";
    if (!uPlot) { this.note.textContent = loadError; return; }
    const keys = series.map((s) => s.key).join("|");
    const data = [ts, ...series.map((s) => s.values)];
    if (this.plot && keys === this.keys) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.keys = keys;
    const fmt = this.unit;
    const yMax = this.yMax;
    this.plot = new uPlot({
      width: this.width(),
      height: this.height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(yMax ?? 0, max || 0, yMax ? 0 : 1) * 1.05] } },
      axes: [{ space: 70 }, { values: (_u, vals) => vals.map((v) => fmt.axis(v)), size: 64 }],
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: s.color || PALETTE[i % PALETTE.length], width: 1.5,
        dash: s.dash, spanGaps: false, points: { show: false },
      }))],
      plugins: [markerPlugin(() => this.markers)],
    }, data, this.canvas);
  }

  destroy() {
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

// A constant series (a threshold) over the frame's axis.
export function constant(ts, value) { return ts.map(() => value); }
