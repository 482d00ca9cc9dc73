// The series page's slice viewer: each layer's values (HU for CT) come from the node as
// int16 or float32 arrays, are windowed here and drawn on a canvas; hover reads them back.
"use strict";
(function () {
  const root = document.getElementById("viewer");
  if (!root) return;
  const key = root.dataset.key;
  const count = Number(root.dataset.count);
  const slider = document.getElementById("slice");
  const number = document.getElementById("slice-number");
  const hover = document.getElementById("hover");
  const cache = new Map();  // "index/layer" -> Promise of {values, rows, cols}
  let meta = null, index = 0, preset = null, drawn = 0, hovered = null, current = {};

  function load(i, layer) {
    const id = i + "/" + layer;
    if (!cache.has(id)) {
      cache.set(id, fetch(`/series/${key}/slice/${i}/${encodeURIComponent(layer)}`, {credentials: "same-origin"})
        .then(r => { if (!r.ok) throw new Error(r.status); return r; })
        .then(async r => {
          const buffer = await r.arrayBuffer();
          const values = r.headers.get("X-Dtype") === "int16" ? new Int16Array(buffer) : new Float32Array(buffer);
          return {values, rows: Number(r.headers.get("X-Rows")), cols: Number(r.headers.get("X-Columns"))};
        }));
      if (cache.size > 400) cache.delete(cache.keys().next().value);
    }
    return cache.get(id);
  }

  function auto(values) {  // 1st to 99th percentile of a sample
    const sample = [];
    const step = Math.max(1, Math.floor(values.length / 4096));
    for (let k = 0; k < values.length; k += step) sample.push(values[k]);
    sample.sort((a, b) => a - b);
    const lo = sample[Math.floor(sample.length * 0.01)], hi = sample[Math.floor(sample.length * 0.99)];
    return [(lo + hi) / 2, Math.max(hi - lo, 1)];
  }

  function windowFor(layer, slice, values) {
    if (layer === "source" || layer === "enhanced" || layer === "difference") {
      let w = preset === "own" ? meta.window : meta.presets[preset];
      if (!w) w = auto(values);
      if (layer === "difference") return [0, Math.max(20, w[1] / 4)];
      return w;
    }
    return slice.windows[layer] || auto(values);
  }

  function draw(canvas, values, rows, cols, w) {
    canvas.width = cols; canvas.height = rows;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(cols, rows);
    const lo = w[0] - w[1] / 2, scale = 255 / w[1], px = image.data;
    for (let k = 0, j = 0; k < values.length; k++, j += 4) {
      let g = (values[k] - lo) * scale;
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      px[j] = px[j + 1] = px[j + 2] = g; px[j + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    const caption = canvas.parentElement.querySelector(".window");
    if (caption) caption.textContent = ` · C ${round(w[0])} W ${round(w[1])}`;
  }

  function round(v) { return Math.round(v * 10) / 10; }

  async function render() {
    const ticket = ++drawn, i = index, slice = meta.slices[i];
    const layers = slice.layers;
    const got = {};
    await Promise.all(layers.map(async layer => { got[layer] = await load(i, layer); }));
    if (ticket !== drawn) return;  // a newer slice was asked for meanwhile
    if (got.source && got.enhanced) {
      const d = new Float32Array(got.source.values.length);
      for (let k = 0; k < d.length; k++) d[k] = got.enhanced.values[k] - got.source.values[k];
      got.difference = {values: d, rows: got.source.rows, cols: got.source.cols};
    }
    for (const canvas of root.querySelectorAll("canvas")) {
      const layer = canvas.id.slice("layer-".length), data = got[layer];
      canvas.parentElement.classList.toggle("missing", !data);
      if (data) draw(canvas, data.values, data.rows, data.cols, windowFor(layer, slice, data.values));
    }
    current = got;
    showHover();
    root.dataset.rendered = `${i + 1}:${preset}`;  // for tests and screenshots: what is shown
    for (const near of [i + 1, i - 1, i + 2]) {  // the next slices, before the wheel gets there
      if (near >= 0 && near < count) for (const layer of meta.slices[near].layers) load(near, layer);
    }
  }

  function go(i) {
    i = Math.max(0, Math.min(count - 1, i));
    if (i === index && root.dataset.rendered) return;
    index = i;
    slider.value = i + 1;
    number.textContent = `${i + 1} / ${count}`;
    root.dataset.slice = String(i + 1);
    render();
  }

  function choose(name) {
    preset = name;
    for (const b of root.querySelectorAll(".preset")) b.classList.toggle("on", b.dataset.preset === name);
    render();
  }

  function showHover() {
    if (!hovered) { hover.textContent = ""; return; }
    const [x, y] = hovered, parts = [`x ${x} y ${y}`];
    for (const layer of ["source", "enhanced", "difference", "uncertainty", "change"]) {
      const data = current[layer];
      if (data && x < data.cols && y < data.rows) parts.push(`${layer} ${round(data.values[y * data.cols + x])}`);
    }
    hover.textContent = parts.join(" · ") + (meta.modality === "CT" ? " HU" : "");
  }

  root.addEventListener("wheel", e => { e.preventDefault(); go(index + (e.deltaY > 0 ? 1 : -1)); }, {passive: false});
  document.addEventListener("keydown", e => {
    const moves = {ArrowDown: 1, ArrowRight: 1, j: 1, ArrowUp: -1, ArrowLeft: -1, k: -1, PageDown: 10, PageUp: -10};
    if (e.key in moves) { e.preventDefault(); go(index + moves[e.key]); }
    else if (e.key === "Home") go(0);
    else if (e.key === "End") go(count - 1);
  });
  slider.addEventListener("input", () => go(Number(slider.value) - 1));
  for (const b of root.querySelectorAll(".preset")) b.addEventListener("click", () => choose(b.dataset.preset));
  for (const canvas of root.querySelectorAll("canvas")) {
    canvas.addEventListener("mousemove", e => {
      const r = canvas.getBoundingClientRect();
      hovered = [Math.floor((e.clientX - r.left) * canvas.width / r.width),
                 Math.floor((e.clientY - r.top) * canvas.height / r.height)];
      showHover();
    });
    canvas.addEventListener("mouseleave", () => { hovered = null; showHover(); });
  }

  fetch(`/series/${key}/slices.json`, {credentials: "same-origin"}).then(r => r.json()).then(m => {
    meta = m;
    if (!count) return;
    const ct = m.modality === "CT";
    choose(ct ? "soft tissue" : "own");  // own: the file's window, else 1st-99th percentile
    go(0);
  });
})();
