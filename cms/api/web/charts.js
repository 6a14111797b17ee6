// Time-series charts: uPlot (vendored from npm, see scripts/web-assets.sh) over the frames the
// history API returns: one shared time axis `ts` and one value (or null) per point per series.
//
// A canvas cannot be read back, so each chart also writes what it shows into the DOM: a legend
// with every series' latest value and unit, and data- attributes on the chart element
// (data-points: points with a value; data-latest-<key>: each series' latest value; data-x-labels
// and data-y-labels: the axes' tick labels, "|"-separated; data-paths: "stepped" for counts),
// which is what people with screen readers and the browser tests read.
//
// Every chart writes its time axis the same way (24-hour HH:MM, ticks on whole minutes or
// hours), each axis in one unit (MiB or GiB, never both), and a count is a count: the server
// gives a bucket's mean number of replicas (1.5 when a bucket saw 1 then 2), which the chart
// rounds to the nearest whole count and draws as steps, never as a slope between two counts.

import { fmt, GIB_FROM_MIB, h, replace } from "./ui.js";

let uPlot = null;
let loadError = "";
try {
  uPlot = (await import("./vendor/uPlot.esm.js")).default;
} catch (e) {
  loadError = "the charting library is missing on the server (run scripts/web-assets.sh)";
}

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                 "#4b5563", "#65a30d"];

const COUNT_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
const MIB_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000];
const GIB_INCRS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000].map((g) => g * 1024);
const TIME_INCRS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

// The axes' font, written on each chart (data-axis-font) so a test can measure the labels, and
// the y axis as wide as its widest label: a fixed width cut "1000 MiB" to "000 MiB". uPlot
// draws a label right-aligned, its tick (10 px) and a gap (5 px) from the plot.
const AXIS_FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
const measurer = document.createElement("canvas").getContext("2d");
function yAxisSize(_u, values) {
  if (!values || !values.length) return 48;
  measurer.font = AXIS_FONT;
  const widest = Math.max(...values.map((v) => measurer.measureText(String(v)).width));
  return Math.max(48, Math.ceil(widest) + 10 + 5 + 6);
}

// Per unit: a value's text (legends), how a raw value is shown (counts rounded, CPU shares
// clamped at 100 %: see fmt.share), and the y axis' tick spacing and labels. `top` is what picks
// a memory chart's unit: its `ref` (the host's total RAM, the VM's maximum) when it has one,
// else the axis' top, so the legend and every tick of the axis share one unit.
export const UNITS = {
  pct: { text: (v) => fmt.share(v, 1), show: (v) => Math.min(1, Math.max(0, v)),
         axis: (vals) => vals.map((v) => `${Math.round(v * 100)} %`) },
  mib: { text: (v, ref) => fmt.mib(v, ref ?? v), show: (v) => v,
         incrs: (top) => (top >= GIB_FROM_MIB ? GIB_INCRS : MIB_INCRS),
         axis: (vals, top) => vals.map((v) => fmt.mib(v, top).replace(/\.0 GiB$/, " GiB")) },
  count: { text: (v) => String(v), show: (v) => Math.round(v), incrs: () => COUNT_INCRS, stepped: true,
           axis: (vals) => vals.map((v) => String(Math.round(v))) },
  // a mean of counts (requests in flight per replica over a tick): not rounded, not stepped
  load: { text: (v) => v.toFixed(1), show: (v) => v, axis: (vals) => vals.map((v) => String(+v.toFixed(2))) },
  s: { text: (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`), show: (v) => v,
       axis: (vals) => vals.map((v) => `${+v.toFixed(2)} s`) },
};

// The series' value now: its last point, if that is one of the last RECENT points (a VM that
// left the host or stopped shows "no recent data", not its last figure from minutes ago).
// Also what a host's CPU bar shows beside its chart, so the two never disagree.
const RECENT = 3;
export function latestPoint(ts, values) {
  for (let i = values.length - 1; i >= Math.max(0, values.length - RECENT); i--) {
    if (values[i] !== null && values[i] !== undefined) return { value: values[i], ts: ts[i] };
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

// A chart with a title, a unit, and series given as [{key, label, values, color?, dash?, width?}]
// per update; series are drawn in order, so a later one lies on top of an earlier one.
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
    this.ref = null;          // a memory chart's reference figure for its unit (see UNITS.mib)
    this.canvas = h("div", { class: "chart-canvas" });
    this.legend = h("ul", { class: "legend", "aria-label": `${title}: latest values` });
    this.note = h("p", { class: "chart-note muted" });
    this.el = h("figure", { class: "chart", id, dataset: { points: 0, unit, paths: this.unit.stepped ? "stepped" : "linear",
                                                          axisFont: AXIS_FONT } },
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

  // The axis labels as drawn, for the DOM (the canvas cannot be read).
  labels(which, out) { this.el.dataset[which] = out.join("|"); return out; }

  // ts: the frame's time axis; series: [{key, label, values, dash?, color?, width?}]; markers: [{ts, kind}]
  update(ts, series, markers = []) {
    this.markers = markers;
    const show = this.unit.show;
    series = series.map((s) => ({ ...s, values: s.values.map((v) => (v === null || v === undefined ? null : show(v))) }));
    const points = series.length ? series[0].values.filter((v) => v !== null).length : 0;
    this.el.dataset.points = points;
    for (const k of Object.keys(this.el.dataset)) if (k.startsWith("latest")) delete this.el.dataset[k];
    replace(this.legend, series.map((s, i) => {
      const p = latestPoint(ts, s.values);
      const v = p ? p.value : null;
      this.el.dataset[`latest${s.key.replace(/(^|[-_])(\w)/g, (_, _d, c) => c.toUpperCase())}`] = v === null ? "" : v;
      return h("li", { dataset: { key: s.key, latest: v === null ? "" : v, dash: s.dash ? s.dash.join(",") : "" } },
        h("span", { class: `swatch${s.dash ? " dashed" : ""}`, style: `--c:${s.color || PALETTE[i % PALETTE.length]}` }),
        `${s.label}: `, h("strong", {}, v === null ? "no recent data" : this.unit.text(v, this.ref)));
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
    const unit = this.unit;
    const yMax = this.yMax;
    const paths = unit.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined;
    this.plot = new uPlot({
      width: this.width(),
      height: this.height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(yMax ?? 0, max || 0, yMax ? 0 : 1) * 1.05] } },
      axes: [{ space: 50, incrs: TIME_INCRS, font: AXIS_FONT,
               values: (_u, vals) => this.labels("xLabels", vals.map((t) => fmt.clock(t))) },
             { incrs: unit.incrs && ((_u, _i, _min, max) => unit.incrs(this.ref ?? max)), font: AXIS_FONT,
               values: (u, vals) => this.labels("yLabels", unit.axis(vals, this.ref ?? u.scales.y.max)), size: yAxisSize }],
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: s.color || PALETTE[i % PALETTE.length], width: s.width || 1.5,
        dash: s.dash, spanGaps: false, points: { show: false }, paths,
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
