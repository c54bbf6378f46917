"use strict";
/* A line chart on a canvas: a few series over time, a grid, time labels.  Small on purpose. */
window.LineChart = class LineChart {
  constructor(canvas, series) {
    this.canvas = canvas;
    this.series = series; // [{key, color}]
    this.points = [];     // [[t, v1, v2, ...], ...]
    this.span = 300;      // seconds shown
  }
  set(points, span) { this.points = points; this.span = span; this.draw(); }
  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 46, right = 10, top = 10, bottom = 24;
    const pw = w - left - right, ph = h - top - bottom;
    const now = this.points.length ? this.points[this.points.length - 1][0] : Date.now() / 1000;
    const t0 = now - this.span;
    let max = 0;
    for (const p of this.points) for (let i = 1; i < p.length; i++) max = Math.max(max, p[i]);
    max = niceMax(max);
    g.font = "11px system-ui, sans-serif"; g.fillStyle = "#6b7686"; g.strokeStyle = "#e9edf3"; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.beginPath(); g.moveTo(left, Math.round(y) + 0.5); g.lineTo(left + pw, Math.round(y) + 0.5); g.stroke();
      g.textAlign = "right"; g.textBaseline = "middle";
      g.fillText(fmtRate((max * i) / 4), left - 8, y);
    }
    g.textBaseline = "top";
    const ticks = 5;
    for (let i = 0; i <= ticks; i++) {
      const t = t0 + (this.span * i) / ticks, x = left + (pw * i) / ticks;
      g.textAlign = i === 0 ? "left" : i === ticks ? "right" : "center";
      const label = new Date(t * 1000).toLocaleTimeString([], {hour12: false, hour: "2-digit", minute: "2-digit",
                                                              second: this.span <= 600 ? "2-digit" : undefined});
      g.fillText(label, x, top + ph + 6);
    }
    const styles = getComputedStyle(document.documentElement);
    this.series.forEach((s, idx) => {
      g.strokeStyle = styles.getPropertyValue(s.color).trim() || s.color;
      g.lineWidth = 2; g.lineJoin = "round"; g.beginPath();
      let started = false;
      for (const p of this.points) {
        if (p[0] < t0) continue;
        const x = left + ((p[0] - t0) / this.span) * pw;
        const y = top + ph - (max ? (p[idx + 1] / max) * ph : 0);
        if (!started) { g.moveTo(x, y); started = true; } else g.lineTo(x, y);
      }
      g.stroke();
    });
    if (!this.points.length) {
      g.fillStyle = "#6b7686"; g.textAlign = "center"; g.textBaseline = "middle";
      g.fillText("collecting…", left + pw / 2, top + ph / 2);
    }
  }
};
function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}
function fmtRate(v) { return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1).replace(/\.0$/, "") : v.toFixed(2).replace(/\.?0+$/, ""); }
