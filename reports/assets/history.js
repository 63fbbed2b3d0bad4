// history.html: one SVG chart per operation x method from the embedded history.json, redrawn on every control change.
"use strict";
(function () {
  const doc = JSON.parse(document.getElementById("history-data").textContent);
  const $ = (id) => document.getElementById(id);
  const NS = "http://www.w3.org/2000/svg";
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const W = 760, H = 280, M = { l: 72, r: 16, t: 22, b: 44 };
  const commits = doc.commits;

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function seconds(value) {
    if (value === 0) return "0";
    const units = [["s", 1], ["ms", 1e-3], ["µs", 1e-6], ["ns", 1e-9]];
    const [name, scale] = units.find(([, s]) => value >= s) || units[units.length - 1];
    return (value / scale).toPrecision(3) + " " + name;
  }
  const format = (mode, value) => (mode === "raw" ? seconds(value) : value.toPrecision(3) + "×");

  // steps per mode and cell id: [{commit, ratio}]
  const steps = {};
  for (const [mode, groups] of Object.entries(doc.steps)) {
    steps[mode] = {};
    for (const group of groups) for (const cell of group.cells) (steps[mode][cell.cell] ||= []).push({ commit: group.commit, ratio: cell.ratio });
  }
  const groups = new Map();
  for (const cell of doc.cells) {
    const name = cell.operation + " · " + cell.method;
    if (!groups.has(name)) groups.set(name, { operation: cell.operation, method: cell.method, cells: [] });
    groups.get(name).cells.push(cell);
  }
  const ordered = [...groups.values()].sort((a, b) => (a.operation === "floor") - (b.operation === "floor"));
  const size = (cell) => String(cell.n_images);
  function fill(select, values) {
    for (const value of [...new Set(values)].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))) {
      const option = document.createElement("option");
      option.value = option.textContent = value;
      select.appendChild(option);
    }
  }
  fill($("method"), doc.cells.map((cell) => cell.method));
  fill($("operation"), doc.cells.map((cell) => cell.operation));
  fill($("size"), doc.cells.map(size));

  // round tick values: 1, 2, 5 x 10^k on a log axis spanning enough of them, else steps of 1, 2, 2.5 or 5 x 10^k
  function linearTicks(lo, hi) {
    const rough = (hi - lo) / 5, magnitude = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= rough);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }
  function ticks(lo, hi, log) {  // lo, hi on the axis' scale (log10 for a log axis); returns values
    if (!log) return linearTicks(lo, hi);
    const out = [];
    for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
      for (const m of [1, 2, 5]) if (Math.log10(m) + e >= lo && Math.log10(m) + e <= hi) out.push(m * Math.pow(10, e));
    }
    return out.length >= 3 ? out : linearTicks(Math.pow(10, lo), Math.pow(10, hi));
  }

  function chart(group, cells, state) {
    const section = document.createElement("section");
    section.className = "chart";
    section.dataset.group = group.operation + " " + group.method;
    const title = document.createElement("h3");
    title.textContent = group.operation + " · " + group.method;
    section.appendChild(title);
    const log = state.scale === "log";
    const f = (v) => (log ? Math.log10(v) : v);
    const values = cells.flatMap((cell) => cell.series[state.mode].flatMap((p) => [p.lo, p.hi, p.value]));
    let lo = Math.min(...values.map(f)), hi = Math.max(...values.map(f));
    if (!log) lo = Math.min(lo, 0);
    if (hi - lo < 1e-12) { hi += 0.5; lo -= 0.5; }
    const pad = (hi - lo) * 0.06;
    lo -= log ? pad : 0; hi += pad;
    const x = (i) => M.l + (commits.length > 1 ? (i / (commits.length - 1)) * (W - M.l - M.r) : (W - M.l - M.r) / 2);
    const y = (v) => H - M.b - ((f(v) - lo) / (hi - lo)) * (H - M.t - M.b);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title.textContent });
    const grid = el("g", { class: "grid ticks" }, svg);
    for (const t of ticks(lo, hi, log)) {
      el("line", { x1: M.l, x2: W - M.r, y1: y(t), y2: y(t) }, grid);
      el("text", { x: M.l - 6, y: y(t) + 4, "text-anchor": "end" }, grid, format(state.mode, t));
    }
    const every = Math.max(1, Math.ceil(commits.length / 12));
    const axis = el("g", { class: "axis" }, svg);
    el("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, stroke: "#888" }, axis);
    commits.forEach((commit, i) => {
      const last = i === commits.length - 1 && i % every >= every * 0.8;
      if (i % every === 0 || last) el("text", { x: x(i), y: H - M.b + 16, "text-anchor": "middle" }, axis, commit.short);
    });
    el("text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle" }, axis, "commit (oldest → newest)");
    el("text", { x: 14, y: (H - M.b + M.t) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(H - M.b + M.t) / 2})` }, axis,
      state.mode === "raw" ? "median time per round" : "median / floor");
    const legend = document.createElement("div");
    legend.className = "legend";
    cells.forEach((cell, index) => {
      const colour = COLOURS[index % COLOURS.length];
      const points = cell.series[state.mode];
      const g = el("g", { class: "series", "data-cell": cell.id }, svg);
      el("path", { d: points.map((p, i) => (i ? "L" : "M") + x(p.commit) + " " + y(p.value)).join(" "), fill: "none", stroke: colour, "stroke-width": 1.5 }, g);
      for (const p of points) {
        if (p.hi > p.lo) el("line", { x1: x(p.commit), x2: x(p.commit), y1: y(p.lo), y2: y(p.hi), stroke: colour, "stroke-opacity": 0.45 }, g);
        const dot = el("circle", { class: "pt", cx: x(p.commit), cy: y(p.value), r: 3.5, fill: colour, "data-commit": commits[p.commit].short }, g);
        dot.addEventListener("mouseenter", (event) => tip(event, cell, p, state.mode));
        dot.addEventListener("mouseleave", () => ($("tip").style.display = "none"));
      }
      for (const step of (steps[state.mode][cell.id] || [])) {
        const s = el("g", { class: "step", "data-commit": commits[step.commit].short }, svg);
        const sx = (x(step.commit - 1) + x(step.commit)) / 2;
        el("line", { x1: sx, x2: sx, y1: M.t, y2: H - M.b }, s);
        el("text", { x: sx + 3, y: M.t - 6 }, s, `${commits[step.commit].short} ×${step.ratio.toFixed(2)}`);
      }
      const item = document.createElement("span");
      item.style.setProperty("--c", colour);
      item.textContent = `${cell.n_images} images` + (cell.variant ? " " + cell.variant : "") + (cells.length > 1 && new Set(cells.map((c) => c.image_shape.join("x"))).size > 1 ? " " + cell.image_shape.join("x") : "");
      legend.appendChild(item);
    });
    section.appendChild(svg);
    section.appendChild(legend);
    return section;
  }

  function tip(event, cell, point, mode) {
    const commit = commits[point.commit];
    const box = $("tip");
    box.innerHTML = "";
    const lines = [cell.id, `commit ${commit.short} · ${commit.time.replace("T", " ").slice(0, 16)}`,
      `median ${format(mode, point.value)}`, `spread ${format(mode, point.lo)} – ${format(mode, point.hi)} (${point.runs.length} run${point.runs.length > 1 ? "s" : ""})`];
    for (const line of lines) { const div = document.createElement("div"); div.textContent = line; box.appendChild(div); }
    box.style.left = event.clientX + 12 + "px";
    box.style.top = event.clientY + 12 + "px";
    box.style.display = "block";
  }

  function render() {
    const state = { mode: $("mode").value, scale: $("scale").value, method: $("method").value, operation: $("operation").value, size: $("size").value };
    const holder = $("charts");
    holder.innerHTML = "";
    $("tip").style.display = "none";  // its point may be gone
    let shown = 0, lines = 0;
    for (const group of ordered) {
      if ((state.method && group.method !== state.method) || (state.operation && group.operation !== state.operation)) continue;
      const cells = group.cells.filter((cell) => (!state.size || size(cell) === state.size) && cell.series[state.mode].length);
      if (!cells.length) continue;
      holder.appendChild(chart(group, cells, state));
      shown += 1; lines += cells.length;
    }
    $("summary").textContent = shown ? `${shown} chart${shown > 1 ? "s" : ""}, ${lines} cell${lines > 1 ? "s" : ""}` : "";
    if (!shown) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = state.mode === "floor" ? "No cell matches the filter with a floor in its runs." : "No cell matches the filter.";
      holder.appendChild(empty);
    }
  }
  for (const id of ["mode", "scale", "method", "operation", "size"]) $(id).addEventListener("change", render);
  render();
})();
