// kohyawan ui: the run page's charts (uPlot). The server sends bounded, already downsampled series
// (/api/runs/ROOT/ID/series): per attempt the raw loss and its EMA against the absolute step, VRAM and RAM
// against seconds since the first step, and the ladder steps, drawn as dashed lines with their label.
(function () {
  "use strict";
  var COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];
  var plots = {};

  function hms(s) {
    s = Math.max(0, Math.round(s));
    var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    return h + ":" + (m < 10 ? "0" : "") + m + ":" + (r < 10 ? "0" : "") + r;
  }

  function alpha(hex, a) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }

  function marksPlugin(holder, key) {
    return { hooks: { draw: [function (u) {
      var ctx = u.ctx, dpr = window.devicePixelRatio || 1;
      ctx.save();
      holder.marks.forEach(function (m, i) {
        var v = m[key];
        if (v === null || v === undefined) { return; }
        var x = Math.round(u.valToPos(v, "x", true));
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) { return; }
        ctx.strokeStyle = "#c53030"; ctx.lineWidth = 1.5 * dpr; ctx.setLineDash([6 * dpr, 4 * dpr]);
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.setLineDash([]); ctx.fillStyle = "#c53030"; ctx.font = (11 * dpr) + "px system-ui, sans-serif";
        ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";
        ctx.fillText(m.label, x + 4 * dpr, u.bbox.top + (14 + 13 * (i % 3)) * dpr);
      });
      ctx.restore();
    }] } };
  }

  function lossSetup(doc) {
    var series = [{ label: "step" }], data = [doc.loss.x];
    doc.loss.attempts.forEach(function (a, i) {
      var c = COLORS[i % COLORS.length];
      series.push({ label: "attempt " + a.attempt + " raw", stroke: alpha(c, 0.35), width: 1, spanGaps: true,
                    points: { show: false } });
      series.push({ label: "attempt " + a.attempt + " EMA", stroke: c, width: 2, spanGaps: true,
                    points: { show: false } });
      data.push(a.raw, a.ema);
    });
    return { series: series, data: data, axes: [{ label: "step" }, { label: "loss" }],
             scales: { x: { time: false } }, key: "step" };
  }

  function memSetup(doc) {
    var m = doc.memory;
    return { series: [{ label: "time", value: function (u, v) { return v === null ? "-" : hms(v); } },
                      { label: "VRAM GB", stroke: "#c2255c", width: 2, spanGaps: true, points: { show: false } },
                      { label: "RAM GB", stroke: "#0b7285", width: 2, spanGaps: true, points: { show: false } }],
             data: [m.x, m.vram, m.ram], scales: { x: { time: false } }, key: "t",
             axes: [{ label: "time since the first step", values: function (u, ticks) {
                      var span = u.scales.x.max - u.scales.x.min;
                      return ticks.map(function (v) { return span < 120 ? v.toFixed(1) + " s" : hms(v); });
                    } },
                    { label: "GB" }] };
  }

  function draw(id, setup, marks) {
    var el = document.getElementById(id);
    if (!el) { return; }
    var old = plots[id];
    if (!setup.data[0].length) {
      if (old) { old.plot.destroy(); delete plots[id]; }
      el.textContent = "no metrics yet";
      return;
    }
    if (old && old.count === setup.series.length) {
      old.holder.marks = marks;
      old.plot.setData(setup.data);
      return;
    }
    if (old) { old.plot.destroy(); }
    el.textContent = "";
    var holder = { marks: marks };
    var opts = { width: Math.max(320, el.clientWidth - 12), height: 260, series: setup.series, axes: setup.axes,
                 scales: setup.scales, plugins: [marksPlugin(holder, setup.key)], legend: { live: true } };
    plots[id] = { plot: new window.uPlot(opts, setup.data, el), count: setup.series.length, holder: holder };
  }

  function ladderList(doc) {
    var ul = document.getElementById("ladder");
    if (!ul) { return; }
    ul.textContent = "";
    if (!doc.ladder.length) {
      var li = document.createElement("li");
      li.className = "sub";
      li.textContent = "no ladder steps: no attempt ended in an OOM, a NaN, a spike or a stall";
      ul.appendChild(li);
    }
    doc.ladder.forEach(function (m) {
      var item = document.createElement("li");
      item.className = "ladder-mark";
      item.textContent = "attempt " + m.attempt + ", " + m.label + (m.next ? " — " + m.next : "");
      ul.appendChild(item);
    });
    var note = document.getElementById("chart-note");
    if (note) {
      note.textContent = doc.records + " metric lines, " + doc.points + " points drawn" +
        (doc.loss.alpha ? "; EMA alpha " + doc.loss.alpha : "") +
        (doc.memory.vram.some(function (v) { return v !== null; }) ? "" : "; VRAM not measured (no NVML)");
    }
  }

  function reload() {
    var box = document.getElementById("charts");
    if (!box || !window.uPlot) { return; }
    fetch(box.getAttribute("data-src"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (doc) {
        if (!doc) { return; }
        draw("loss-chart", lossSetup(doc), doc.ladder);
        draw("mem-chart", memSetup(doc), doc.ladder);
        ladderList(doc);
        box.setAttribute("data-loaded", String(doc.records));
      });
  }

  window.kohyawanCharts = { reload: reload };
  document.addEventListener("DOMContentLoaded", reload);
})();
