/* qinspect report page: draws the charts from the embedded JSON (#qi-data) with Chart.js,
   sorts and filters the tables. Text from the file is only ever set as textContent or
   drawn on a canvas, never parsed as HTML. */
(function () {
  'use strict';
  var t0 = performance.now();
  var status = document.getElementById('qi-status');
  (window.__qiEarly || []).forEach(function (m) { window.__qiLog(m); });
  var data = JSON.parse(document.getElementById('qi-data').textContent);
  var count = 0;
  var C = { bad: '#c0392b', warn: '#d69e2e', ok: '#2f855a', blue: '#2b6cb0', grey: '#a0aec0',
            orange: '#dd6b20', sel: '#1a202c' };

  Chart.defaults.animation = false;
  Chart.defaults.responsive = true;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.size = 11;

  function num(v) {
    if (typeof v === 'number') return v;
    if (v === 'Infinity') return Infinity;
    if (v === '-Infinity') return -Infinity;
    if (v === null || v === undefined) return null;
    return NaN;
  }
  function finite(v) { v = num(v); return v !== null && isFinite(v); }
  function fixed(v, d, unit) {
    v = num(v);
    if (v === null) return '-';
    if (!isFinite(v)) return (v > 0 ? 'inf' : v < 0 ? '-inf' : 'NaN') + (unit ? ' ' + unit : '');
    return v.toFixed(d) + (unit ? ' ' + unit : '');
  }
  function make(id, config) {
    var el = document.getElementById(id);
    if (!el) return null;
    var chart = new Chart(el, config);
    count += 1;
    status.dataset.charts = String(count);
    return chart;
  }

  /* Horizontal bars, one per layer: labels are layer names (drawn on the canvas, inert). */
  function hbars(id, labels, datasets, unit, extra) {
    extra = extra || {};
    return make(id, {
      type: 'bar',
      data: { labels: labels, datasets: datasets },
      options: {
        indexAxis: 'y',
        onClick: extra.onClick,
        plugins: {
          legend: { display: datasets.length > 1 },
          tooltip: { callbacks: { label: extra.label || function (ctx) {
            return ctx.dataset.label + ': ' + fixed(ctx.raw, 2, unit);
          } } }
        },
        scales: {
          x: { title: { display: true, text: extra.xtitle || unit }, min: extra.min,
               max: extra.max, stacked: !!extra.stacked },
          y: { stacked: !!extra.stacked, ticks: { autoSkip: false, callback: function (v) {
            var s = this.getLabelForValue(v);
            return s.length > 40 ? s.slice(0, 18) + '\u2026' + s.slice(-20) : s;
          } } }
        }
      }
    });
  }

  /* SQNR bars: +inf (bit-exact) is drawn past the largest finite value, in green. */
  function sqnrBars(id, names, values, colors, onClick) {
    var top = 0;
    values.forEach(function (v) { if (finite(v)) top = Math.max(top, num(v)); });
    var cap = top + 10;
    var shown = values.map(function (v) {
      v = num(v);
      if (v === null || isNaN(v)) return null;
      return isFinite(v) ? v : (v > 0 ? cap : 0);
    });
    var bg = values.map(function (v, i) {
      return num(v) === Infinity ? C.ok : (colors ? colors[i] : C.blue);
    });
    return hbars(id, names, [{ label: 'SQNR', data: shown, backgroundColor: bg }], 'dB', {
      onClick: onClick, xtitle: 'SQNR (dB), higher is better',
      label: function (ctx) {
        var v = num(values[ctx.dataIndex]);
        return 'SQNR ' + (v === Infinity ? 'inf dB (bit-exact)' : fixed(v, 1, 'dB'));
      }
    });
  }

  /* --- tables: sort on header click, filter by the first column ------------------------ */
  function sortable(tableEl) {
    var heads = tableEl.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = tableEl.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === y) return 0;
          if (x === '') return 1;
          if (y === '') return -1;
          var r = (typeof x === 'number' && typeof y === 'number') ? x - y
            : String(x).localeCompare(String(y));
          return asc ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  function key(cell) {
    if (!cell) return '';
    var v = cell.getAttribute('data-v');
    if (v === null) return cell.textContent;
    if (v === '') return '';
    var n = Number(v);
    return isNaN(n) ? v : n;
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), sortable);
  Array.prototype.forEach.call(document.querySelectorAll('input.filter'), function (box) {
    box.addEventListener('input', function () {
      var want = box.value.toLowerCase();
      var t = document.getElementById(box.getAttribute('data-table'));
      Array.prototype.forEach.call(t.tBodies[0].rows, function (r) {
        r.hidden = want !== '' && r.cells[0].textContent.toLowerCase().indexOf(want) < 0;
      });
    });
  });

  /* --- layer sections: one visible at a time, charts drawn when first shown ------------ */
  var drawn = {};
  function showLayer(i, draw) {
    var arts = document.querySelectorAll('article.layer');
    if (!arts.length) return;
    Array.prototype.forEach.call(arts, function (a) {
      a.hidden = a.getAttribute('data-layer') !== String(i);
    });
    var pick = document.getElementById('layer-pick');
    if (pick) pick.value = String(i);
    if (draw && !drawn[i]) { drawn[i] = true; draw(i); }
  }
  function wireLayers(draw, first) {
    var pick = document.getElementById('layer-pick');
    if (pick) pick.addEventListener('change', function () { showLayer(pick.value, draw); });
    function fromHash() {
      var m = /^#L-(\d+)$/.exec(location.hash);
      if (m) { showLayer(m[1], draw); return true; }
      return false;
    }
    window.addEventListener('hashchange', fromHash);
    if (!fromHash()) showLayer(first, draw);
    return function (i) { location.hash = '#L-' + i; };
  }

  /* --- show -------------------------------------------------------------------------- */
  function drawShow() {
    var layers = data.layers;
    var open = wireLayers(drawShowLayer, firstIndex(layers, function (l) {
      return l.charts && (l.charts.scales || l.charts.histogram);
    }));
    var idx = [], names = [], used = [], edges = [];
    layers.forEach(function (l, i) {
      var h = l.weight && l.weight.health;
      if (!h) return;
      idx.push(i); names.push(l.name);
      used.push(100 * num(h.range_used)); edges.push(100 * num(h.saturated_fraction));
    });
    if (idx.length) {
      hbars('chart-range', names, [
        { label: 'range used (%)', data: used, backgroundColor: C.blue },
        { label: 'values at the edges (%)', data: edges, backgroundColor: C.orange }
      ], '%', { min: 0, max: 100, xtitle: '% of the range / of the values',
                onClick: function (e, els) { if (els.length) open(idx[els[0].index]); } });
    }
  }
  function drawShowLayer(i) {
    var c = data.layers[i].charts;
    if (c.scales) {
      var s = c.scales;
      var sets = [{ label: s.max ? 'smallest scale in bucket' : 'scale', data: s.min,
                    borderColor: C.blue, backgroundColor: C.blue, pointRadius: s.x.length > 200 ? 0 : 2,
                    borderWidth: 1 }];
      if (s.max) sets.push({ label: 'largest scale in bucket', data: s.max, borderColor: C.orange,
                             pointRadius: 0, borderWidth: 1 });
      var pos = s.min.map(num).filter(function (v) { return isFinite(v) && v > 0; });
      var lo = Math.min.apply(null, pos), hi = Math.max.apply(null, (s.max || s.min).map(num)
        .filter(function (v) { return isFinite(v) && v > 0; }));
      var logy = pos.length === s.min.length && hi / lo > 50;
      make('chart-scales-' + i, {
        type: 'line',
        data: { labels: s.x, datasets: sets.map(function (d) {
          d.data = d.data.map(function (v) { v = num(v); return isFinite(v) ? v : null; });
          return d;
        }) },
        options: { plugins: { legend: { display: sets.length > 1 } }, scales: {
          x: { title: { display: true, text: 'channel / group index' } },
          y: { type: logy ? 'logarithmic' : 'linear',
               title: { display: true, text: 'scale (real units per integer step)' + (logy ? ', log' : '') } } } }
      });
    }
    if (c.histogram) {
      var h = c.histogram;
      var labels = h.counts.map(function (_, k) { return h.lo + k * h.width; });
      make('chart-hist-' + i, {
        type: 'bar',
        data: { labels: labels, datasets: [{ label: 'count', data: h.counts,
                backgroundColor: C.blue, barPercentage: 1, categoryPercentage: 1 }] },
        options: { plugins: { legend: { display: false } }, scales: {
          x: { title: { display: true, text: 'stored integer' + (h.outside ? ' (' + h.outside +
               ' values outside the dtype range)' : '') } },
          y: { title: { display: true, text: 'count' } } } },
        plugins: [rangeMarks(h)]
      });
    }
  }
  /* Dashed vertical lines at the dtype's limits (and at a narrower quant_min/quant_max). */
  function rangeMarks(h) {
    return { id: 'rangeMarks', afterDraw: function (chart) {
      var x = chart.scales.x, area = chart.chartArea, ctx = chart.ctx;
      /* lines on the outer edge of the first / last allowed bin */
      var half = h.counts.length > 1 ? (x.getPixelForValue(1) - x.getPixelForValue(0)) / 2 : 0;
      var marks = [[h.lo, 'min ' + h.lo, C.bad, -1], [h.hi, 'max ' + h.hi, C.bad, 1]];
      if (h.range[0] !== h.lo) marks.push([h.range[0], 'quant_min ' + h.range[0], C.warn, -1]);
      if (h.range[1] !== h.hi) marks.push([h.range[1], 'quant_max ' + h.range[1], C.warn, 1]);
      ctx.save();
      ctx.setLineDash([5, 4]); ctx.lineWidth = 1.5; ctx.font = '11px sans-serif';
      marks.forEach(function (m) {
        var k = Math.floor((m[0] - h.lo) / h.width);
        var px = x.getPixelForValue(k) + m[3] * half;
        ctx.strokeStyle = m[2]; ctx.fillStyle = m[2];
        ctx.beginPath(); ctx.moveTo(px, area.top); ctx.lineTo(px, area.bottom); ctx.stroke();
        ctx.textAlign = k > h.counts.length / 2 ? 'right' : 'left';
        ctx.fillText(m[1], px + (ctx.textAlign === 'left' ? 4 : -4), area.top + 12);
      });
      ctx.restore();
    } };
  }
  function firstIndex(list, pred) {
    for (var i = 0; i < list.length; i++) if (pred(list[i])) return i;
    return 0;
  }

  /* Layers of the document that have a value for `get`, in document order. */
  function having(get) {
    var idx = [];
    data.layers.forEach(function (l, i) { if (get(l) !== null && get(l) !== undefined) idx.push(i); });
    return idx;
  }
  function pick(idx, get) { return idx.map(function (i) { return get(data.layers[i]); }); }
  function percent(idx, get) {
    return idx.map(function (i) { var v = num(get(data.layers[i])); return v === null ? null : 100 * v; });
  }
  function jump(idx) {
    return function (e, els) { if (els.length) location.hash = '#L-' + idx[els[0].index]; };
  }
  /* The row or section a #L-n link points at is highlighted, and its bars outlined. */
  var outlined = [];
  function outline(chart, idx) { if (chart) outlined.push({ chart: chart, idx: idx }); }
  function highlight() {
    var m = /^#L-(\d+)$/.exec(location.hash);
    var want = m ? Number(m[1]) : -1;
    Array.prototype.forEach.call(document.querySelectorAll('tr.selected'), function (r) {
      r.classList.remove('selected');
    });
    if (m) Array.prototype.forEach.call(document.querySelectorAll('tr[data-layer="' + m[1] + '"]'),
      function (r) { r.classList.add('selected'); });
    outlined.forEach(function (o) {
      o.chart.data.datasets.forEach(function (d) {
        d.borderColor = C.sel;
        d.borderWidth = o.idx.map(function (i) { return i === want ? 2 : 0; });
      });
      o.chart.update();
    });
  }
  window.addEventListener('hashchange', highlight);

  /* --- diff -------------------------------------------------------------------------- */
  function drawDiff() {
    var w = function (l) { return l.weight ? l.weight.sqnr_db : null; };
    var idx = having(w).filter(function (i) { return !isNaN(num(w(data.layers[i]))); });
    idx.sort(function (a, b) { return num(w(data.layers[a])) - num(w(data.layers[b])); });
    wireLayers(drawChannels, idx.length ? idx[0] : 0);
    if (!idx.length) return;
    var names = pick(idx, function (l) { return l.name; });
    var flagged = pick(idx, function (l) { return l.flags.length || l.problem ? C.bad : C.blue; });
    outline(sqnrBars('chart-sqnr', names, pick(idx, w), flagged, jump(idx)), idx);
    outline(hbars('chart-lsb', names, [
      { label: 'max error', data: pick(idx, function (l) { return num(l.weight.max_error_lsb); }),
        backgroundColor: C.orange },
      { label: 'mean error', data: pick(idx, function (l) { return num(l.weight.mean_error_lsb); }),
        backgroundColor: C.blue }
    ], 'LSB', { onClick: jump(idx), xtitle: 'error (LSB)' }), idx);
    outline(hbars('chart-clip', names, [
      { label: 'clipped', data: percent(idx, function (l) { return l.weight.clipped_fraction; }),
        backgroundColor: C.bad }
    ], '%', { onClick: jump(idx), min: 0, xtitle: '% of the weights' }), idx);
    highlight();
  }

  function drawChannels(i) {
    var w = data.layers[i].weight;
    var ch = w && w.channel_sqnr_db;
    if (!ch || ch.length < 2) return;
    var top = 0;
    ch.forEach(function (v) { if (finite(v)) top = Math.max(top, num(v)); });
    make('chart-channels-' + i, {
      type: 'bar',
      data: { labels: ch.map(function (_, k) { return k; }), datasets: [{ label: 'SQNR',
        data: ch.map(function (v) { v = num(v); return v === null || isNaN(v) ? null :
          isFinite(v) ? v : (v > 0 ? top + 10 : 0); }),
        backgroundColor: ch.map(function (v) { return num(v) === Infinity ? C.ok : C.blue; }),
        barPercentage: 1, categoryPercentage: 0.9 }] },
      options: { plugins: { legend: { display: false }, tooltip: { callbacks: { label:
        function (ctx) { var v = num(ch[ctx.dataIndex]);
          return 'SQNR ' + (v === Infinity ? 'inf dB (bit-exact)' : fixed(v, 1, 'dB')); } } } },
        scales: { x: { title: { display: true, text: 'output channel' } },
                  y: { title: { display: true, text: 'SQNR (dB)' } } } }
    });
  }

  /* --- verify ------------------------------------------------------------------------ */
  function drawVerify() {
    var idx = having(function (l) { return l.verified ? true : null; });
    if (!idx.length) return;
    var synth = pick(idx, function (l) { return !!(l.input && l.input.source === 'synthetic'); });
    var names = pick(idx, function (l) { return l.name; }).map(function (n, k) {
      return synth[k] ? n + ' [synthetic]' : n;
    });
    outline(sqnrBars('chart-sqnr', names, pick(idx, function (l) { return l.sqnr_db; }),
      synth.map(function (s) { return s ? C.warn : C.blue; }), jump(idx)), idx);
    outline(hbars('chart-clip', names, [
      { label: 'below the range', stack: 'c', backgroundColor: C.blue,
        data: percent(idx, function (l) { return l.clipped_low_fraction; }) },
      { label: 'above the range', stack: 'c', backgroundColor: C.bad,
        data: percent(idx, function (l) { return l.clipped_high_fraction; }) }
    ], '%', { onClick: jump(idx), stacked: true, min: 0, xtitle: '% of the outputs' }), idx);
    highlight();
  }

  /* --- check ------------------------------------------------------------------------- */
  function drawCheck() {
    var worst = {};
    data.findings.forEach(function (f) {
      if (f.layer === null) return;
      worst[f.layer] = (worst[f.layer] === 'error' || f.severity === 'error') ? 'error' : 'warning';
    });
    var color = function (l) { return worst[l.name] === 'error' ? C.bad : worst[l.name] ? C.warn : C.blue; };
    var first = firstIndex(data.layers, function (l) { return worst[l.name] === 'error'; });
    wireLayers(null, first);
    var names = function (idx) { return pick(idx, function (l) { return l.name; }); };
    var ws = having(function (l) { return l.weight_sqnr_db; });
    if (ws.length) outline(sqnrBars('chart-wsqnr', names(ws), pick(ws, function (l) {
      return l.weight_sqnr_db; }), pick(ws, color), jump(ws)), ws);
    var os = having(function (l) { return l.output_sqnr_db; });
    if (os.length) outline(sqnrBars('chart-osqnr', names(os), pick(os, function (l) {
      return l.output_sqnr_db; }), pick(os, color), jump(os)), os);
    var cl = having(function (l) { return l.clipping_fraction; });
    if (cl.length) outline(hbars('chart-clip', names(cl), [{ label: 'clipped',
      data: percent(cl, function (l) { return l.clipping_fraction; }),
      backgroundColor: pick(cl, color) }], '%', { onClick: jump(cl), min: 0,
      xtitle: '% of the outputs' }), cl);
    highlight();
  }

  var draw = { show: drawShow, diff: drawDiff, verify: drawVerify, check: drawCheck };
  var command = document.body.getAttribute('data-command');
  try {
    if (draw[command]) draw[command]();
  } catch (e) {
    window.__qiLog('error: ' + (e && e.stack ? e.stack : e));
  }
  status.dataset.ms = String(Math.round(performance.now() - t0));
  status.dataset.done = '1';
})();
