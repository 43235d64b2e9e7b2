/* onebyone explorer: the page's live computations. Plain JavaScript, no libraries.
 *
 * The starting numbers come from data.js (window.ONEBYONE_DATA), computed by the
 * onebyone library. What is recomputed here as the controls change uses the same
 * formulas: a 1x1 convolution is out[k][r][c] = sum over ch of w[k][ch] * x[ch][r][c]
 * (onebyone.numpy.conv1x1), and the calculator counts what onebyone.conv_cost counts.
 * Every shown number carries its exact value in a data-value attribute.
 */
(function () {
  "use strict";

  const DATA = window.ONEBYONE_DATA;

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);

  /** Python's format(x, "g"): 6 significant digits, trailing zeros dropped. */
  function fmtG(x) {
    if (x === 0) return "0";
    if (!Number.isFinite(x)) return String(x);
    const exp = Number(x.toExponential(5).split("e")[1]);
    if (exp < -4 || exp >= 6) {
      const [mantissa, e] = x.toExponential(5).split("e");
      const m = mantissa.includes(".") ? mantissa.replace(/\.?0+$/, "") : mantissa;
      const n = Number(e);
      return `${m}e${n < 0 ? "-" : "+"}${String(Math.abs(n)).padStart(2, "0")}`;
    }
    const s = x.toFixed(Math.max(0, 5 - exp));
    return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
  }

  /** x.toFixed(d) without a "-0.00". */
  function fixed(x, d) {
    const s = x.toFixed(d);
    return /^-0\.?0*$/.test(s) ? s.slice(1) : s;
  }

  /** An integer (Number or BigInt) with thousands separators: 12,443,648. */
  function int(n) {
    return BigInt(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function percent(part, whole) {
    return whole === 0 ? "0%" : `${((100 * Number(part)) / Number(whole)).toFixed(1)}%`;
  }

  /** A light background for a value in [lo, hi] (blue for low, orange for high). */
  function heat(value, lo, hi) {
    const t = hi > lo ? (value - lo) / (hi - lo) : 0.5;
    const hue = 215 - 185 * t;
    return `hsl(${hue.toFixed(0)} 80% ${(94 - 20 * Math.abs(t - 0.5) * 2).toFixed(0)}%)`;
  }

  const clone = (value) => JSON.parse(JSON.stringify(value));

  /** The 1x1 convolution: maps (C, H, W) and weights (K, C) -> (K, H, W). */
  function conv1x1(maps, weights) {
    const h = maps[0].length;
    const w = maps[0][0].length;
    return weights.map((filter) => {
      const out = [];
      for (let r = 0; r < h; r++) {
        const row = [];
        for (let c = 0; c < w; c++) {
          let sum = 0;
          for (let ch = 0; ch < filter.length; ch++) sum += filter[ch] * maps[ch][r][c];
          row.push(sum);
        }
        out.push(row);
      }
      return out;
    });
  }

  /** A number typed into an input, or null (and the input marked) when it is not one. */
  function readNumber(input) {
    const text = input.value.trim();
    const value = text === "" ? NaN : Number(text);
    const ok = Number.isFinite(value);
    input.setAttribute("aria-invalid", ok ? "false" : "true");
    return ok ? value : null;
  }

  /** A (h, w) table; cell(r, c) returns the td's attributes and content. */
  function gridTable(h, w, cell, label) {
    const head = el("tr", {}, el("th", { scope: "col" }, ""));
    for (let c = 0; c < w; c++) head.append(el("th", { scope: "col" }, String(c)));
    const body = el("tbody");
    for (let r = 0; r < h; r++) {
      const row = el("tr", {}, el("th", { scope: "row" }, String(r)));
      for (let c = 0; c < w; c++) row.append(cell(r, c));
      body.append(row);
    }
    return el("table", { class: "grid", "aria-label": label }, el("thead", {}, head), body);
  }

  /** Ink for a digit's stroke: white background for 0, darker as |value| grows. */
  function ink(value, lo, hi) {
    const scale = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    const t = Math.abs(value) / scale;
    return `background:hsl(220 25% ${(98 - 68 * t).toFixed(0)}%);color:${t > 0.55 ? "#fff" : "inherit"}`;
  }

  /** A read-only matrix of numbers, each cell carrying its exact value.
   * digits: decimals shown (null: Python's "g" format); paint: heat (default) or ink. */
  function valueGrid(matrix, label, id, digits, lo, hi, mark, paint) {
    const table = gridTable(matrix.length, matrix[0].length, (r, c) => {
      const v = matrix[r][c];
      return el("td", {
        class: "cell" + (mark && mark(r, c) ? " differ" : ""),
        "data-row": r,
        "data-col": c,
        "data-value": String(v),
        style: paint === "ink" ? ink(v, lo, hi) : `background:${heat(v, lo, hi)}`,
      }, digits === null ? fmtG(v) : fixed(v, digits));
    }, label);
    if (id) table.id = id;
    return table;
  }

  function range(matrices) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const m of matrices) for (const row of m) for (const v of row) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    return [lo, hi];
  }

  /** Arrow keys move focus between the cells of a table that have tabindex. */
  function arrowNavigation(table) {
    table.addEventListener("keydown", (event) => {
      const td = event.target.closest("td[data-row]");
      if (!td) return;
      const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      const move = moves[event.key];
      if (!move) return;
      const r = Number(td.dataset.row) + move[0];
      const c = Number(td.dataset.col) + move[1];
      const next = table.querySelector(`td[data-row="${r}"][data-col="${c}"]`);
      if (next) {
        event.preventDefault();
        next.focus();
      }
    });
  }

  // ------------------------------------------------------------------ 1. worked example

  function workedSection() {
    const W = DATA.worked;
    const C = W.maps.length;
    const H = W.maps[0].length;
    const Wd = W.maps[0][0].length;
    const state = { maps: clone(W.maps), kernel: W.kernel.slice() };
    const mapInputs = [];
    const kernelInputs = [];
    let active = null;

    const mapsBox = $("worked-maps");
    for (let ch = 0; ch < C; ch++) {
      const inputs = [];
      const table = gridTable(H, Wd, (r, c) => {
        const input = el("input", {
          type: "number",
          step: "1",
          inputmode: "decimal",
          id: `worked-map-${ch}-${r}-${c}`,
          value: String(state.maps[ch][r][c]),
          "aria-label": `map ${ch + 1}, row ${r}, column ${c}`,
          oninput: () => {
            const v = readNumber(input);
            if (v === null) return;
            state.maps[ch][r][c] = v;
            update();
          },
        });
        (inputs[r] = inputs[r] || [])[c] = input;
        return el("td", { "data-row": r, "data-col": c }, input);
      }, `map ${ch + 1}`);
      mapInputs.push(inputs);
      mapsBox.append(el("figure", {}, el("figcaption", {}, `map ${ch + 1}`), table));
    }

    const kernelBox = $("worked-kernel");
    for (let ch = 0; ch < C; ch++) {
      const input = el("input", {
        type: "number",
        step: "0.1",
        id: `worked-w-${ch}`,
        value: String(state.kernel[ch]),
        oninput: () => {
          const v = readNumber(input);
          if (v === null) return;
          state.kernel[ch] = v;
          update();
        },
      });
      kernelInputs.push(input);
      kernelBox.append(
        el("label", { class: "control", for: input.id }, `w${ch + 1} (map ${ch + 1})`, input),
      );
    }

    const cells = [];
    const outTable = gridTable(H, Wd, (r, c) => {
      const td = el("td", {
        class: "cell",
        tabindex: "0",
        id: `worked-t-${r}-${c}`,
        "data-row": r,
        "data-col": c,
      });
      td.addEventListener("mouseenter", () => explain(r, c));
      td.addEventListener("focus", () => explain(r, c));
      (cells[r] = cells[r] || [])[c] = td;
      return td;
    }, "output map T");
    outTable.id = "worked-output-table";
    arrowNavigation(outTable);
    $("worked-output").append(outTable);

    const seedState = () =>
      state.kernel.every((v, ch) => v === W.kernel[ch]) &&
      state.maps.every((m, ch) => m.every((row, r) => row.every((v, c) => v === W.maps[ch][r][c])));

    let output = [];

    function spelled(r, c) {
      const terms = state.maps.map((m, ch) => `${fmtG(m[r][c])}*${fmtG(state.kernel[ch])}`);
      return `${terms.join(" + ")} = ${fixed(output[r][c], 2)}`;
    }

    function explain(r, c) {
      if (active) for (const m of mapInputs) m[active[0]][active[1]].parentElement.classList.remove("lit");
      if (active) cells[active[0]][active[1]].classList.remove("active");
      active = [r, c];
      for (const m of mapInputs) m[r][c].parentElement.classList.add("lit");
      cells[r][c].classList.add("active");
      const readout = $("worked-sum");
      readout.textContent = `T[${r},${c}] = ${spelled(r, c)}`;
      readout.dataset.row = r;
      readout.dataset.col = c;
      if (seedState() && cells[r][c].classList.contains("misprint")) {
        readout.append(`   (the seed prints ${fmtG(W.printed[r][c])})`);
      }
    }

    function update() {
      output = conv1x1(state.maps, [state.kernel])[0];
      const [lo, hi] = range([output]);
      const compare = seedState();
      const marked = [];
      for (let r = 0; r < H; r++) {
        for (let c = 0; c < Wd; c++) {
          const td = cells[r][c];
          const v = output[r][c];
          const wrong = compare && Math.abs(Math.round(v * 10) / 10 - W.printed[r][c]) > 1e-9;
          td.textContent = fixed(v, 2);
          td.dataset.value = String(v);
          td.style.background = heat(v, lo, hi);
          td.classList.toggle("misprint", wrong);
          td.setAttribute("aria-label", `T[${r},${c}] = ${fixed(v, 2)}` +
            (wrong ? `, the seed prints ${fmtG(W.printed[r][c])}` : ""));
          if (wrong) {
            td.append(el("span", { class: "badge" }, `seed: ${fmtG(W.printed[r][c])}`));
            marked.push(`${r},${c}`);
          }
        }
      }
      outTable.dataset.marked = marked.join(";");
      $("worked-reset").disabled = compare;
      if (active) explain(active[0], active[1]);
    }

    $("worked-reset").addEventListener("click", () => {
      state.maps = clone(W.maps);
      state.kernel = W.kernel.slice();
      for (let ch = 0; ch < C; ch++) {
        kernelInputs[ch].value = String(state.kernel[ch]);
        kernelInputs[ch].setAttribute("aria-invalid", "false");
        for (let r = 0; r < H; r++) for (let c = 0; c < Wd; c++) {
          mapInputs[ch][r][c].value = String(state.maps[ch][r][c]);
          mapInputs[ch][r][c].setAttribute("aria-invalid", "false");
        }
      }
      update();
    });

    // The seed's slips, stated with the library's numbers.
    const notes = $("worked-notes");
    const total = H * Wd;
    for (const [r, c] of W.mismatches) {
      notes.append(el("p", { class: "seed-note", id: "worked-misprint" },
        el("strong", {}, "Misprint in the seed: "),
        `it prints T[${r},${c}] = ${fmtG(W.printed[r][c])}, but T[${r},${c}] = `,
        el("code", {}, W.spelled[`${r},${c}`]),
        ` (onebyone.numpy.conv1x1). The other ${total - W.mismatches.length} pixels agree; ` +
        "the pixel is outlined while the seed's numbers are in place."));
    }
    notes.append(el("p", { class: "seed-note", id: "worked-size-slip" },
      el("strong", {}, "Slip in the seed: "),
      `its text says the 6×6 maps become one map of size ${W.stated_size.join("×")}. ` +
      `A 1×1 convolution keeps the size: the output is ${W.output.length}×${W.output[0].length}.`));

    update();
  }

  // ------------------------------------------------------------------ 2. depth

  function depthSection() {
    const D = DATA.depth;
    const maps = DATA.worked.maps;
    const C = maps.length;
    const MAX_FILTERS = 8;
    const suggestions = [
      ["map 2 alone", [0, 1, 0]],
      ["sum of the maps", [1, 1, 1]],
      ["map 3 minus map 2", [0, -1, 1]],
      ["map 1 alone", [1, 0, 0]],
      ["twice map 3", [0, 0, 2]],
    ];
    let added = 0;
    const filters = D.names.map((name, k) => ({ name, w: D.filters[k].slice() }));

    function renderFilters() {
      const box = $("depth-filters");
      box.replaceChildren();
      filters.forEach((f, k) => {
        const row = el("div", { class: "filter-row", id: `depth-filter-${k}` });
        const name = el("input", {
          type: "text",
          value: f.name,
          "aria-label": `filter ${k + 1} name`,
          oninput: () => {
            f.name = name.value;
            renderOutputs();
          },
        });
        row.append(el("span", {}, `filter ${k + 1}`), name);
        for (let ch = 0; ch < C; ch++) {
          const input = el("input", {
            type: "number",
            step: "0.1",
            value: String(f.w[ch]),
            id: `depth-w-${k}-${ch}`,
            "aria-label": `filter ${k + 1}, weight for map ${ch + 1}`,
            oninput: () => {
              const v = readNumber(input);
              if (v === null) return;
              f.w[ch] = v;
              renderOutputs();
            },
          });
          row.append(input);
        }
        row.append(el("button", {
          type: "button",
          class: "remove",
          "aria-label": `Remove filter ${k + 1}`,
          disabled: filters.length === 1,
          onclick: () => {
            filters.splice(k, 1);
            renderFilters();
            renderOutputs();
            const next = document.querySelector(
              `#depth-filter-${Math.min(k, filters.length - 1)} button.remove`);
            (next && !next.disabled ? next : $("depth-add")).focus();
          },
        }, "Remove"));
        box.append(row);
      });
      $("depth-add").disabled = filters.length >= MAX_FILTERS;
    }

    function renderOutputs() {
      const weights = filters.map((f) => f.w);
      const outputs = conv1x1(maps, weights);
      const [lo, hi] = range(outputs);
      const box = $("depth-outputs");
      box.replaceChildren();
      outputs.forEach((out, k) => {
        const caption = `map ${k + 1}: ${filters[k].name} (${filters[k].w.map(fmtG).join(", ")})`;
        const table = valueGrid(out, caption, `depth-out-${k}`, 2, lo, hi);
        box.append(el("figure", {}, el("figcaption", {}, caption), table));
      });
      const K = filters.length;
      const H = maps[0].length;
      const Wd = maps[0][0].length;
      const summary = $("depth-summary");
      summary.dataset.filters = K;
      summary.textContent =
        `${K} filter${K === 1 ? "" : "s"}: weight ${K} × ${C} (${K * C} weights) ` +
        `→ output ${K} × ${H} × ${Wd}, ${K} map${K === 1 ? "" : "s"}.`;
    }

    $("depth-add").addEventListener("click", () => {
      if (filters.length >= MAX_FILTERS) return;
      const [name, w] = suggestions[added % suggestions.length];
      added += 1;
      filters.push({ name, w: w.slice() });
      renderFilters();
      renderOutputs();
    });

    renderFilters();
    renderOutputs();
  }

  // ------------------------------------------------------------------ 3. fusion

  function fusionSection() {
    const F = DATA.fusion;
    const state = { a: F.a, b: F.b, w1: F.weight[0], w2: F.weight[1] };
    const controls = $("fusion-controls");

    function numberControl(key, label, step, withRange) {
      const number = el("input", { type: "number", step: String(step), id: `fusion-${key}`,
        value: String(state[key]) });
      const slider = withRange
        ? el("input", { type: "range", min: "-2", max: "2", step: "0.25", value: String(state[key]),
          id: `fusion-${key}-range`, "aria-label": `${label} (slider)` })
        : null;
      number.addEventListener("input", () => {
        const v = readNumber(number);
        if (v === null) return;
        state[key] = v;
        if (slider) slider.value = String(v);
        update();
      });
      if (slider) {
        slider.addEventListener("input", () => {
          state[key] = Number(slider.value);
          number.value = slider.value;
          number.setAttribute("aria-invalid", "false");
          update();
        });
      }
      controls.append(el("span", { class: "control" },
        el("label", { for: number.id }, label), number, slider));
    }
    numberControl("a", "a (horizontal strokes)", 0.5, false);
    numberControl("b", "b (vertical strokes)", 0.5, false);
    numberControl("w1", "w1 (map 1)", 0.25, true);
    numberControl("w2", "w2 (map 2)", 0.25, true);

    const digits = ["2", "3"];

    function build() {
      // the seed's symbolic maps: "a", "b" or 0 at every pixel
      const maps = {};
      for (const d of digits) {
        maps[d] = F.pattern[d].map((rows) =>
          rows.map((row) => [...row].map((ch) => (ch === "a" ? state.a : ch === "b" ? state.b : 0))));
      }
      return maps;
    }

    function update() {
      const maps = build();
      const fused = {};
      for (const d of digits) fused[d] = conv1x1(maps[d], [[state.w1, state.w2]])[0];
      const H = fused["2"].length;
      const Wd = fused["2"][0].length;
      const differing = [];
      for (let r = 0; r < H; r++) for (let c = 0; c < Wd; c++) {
        if (fused["2"][r][c] !== fused["3"][r][c]) differing.push([r, c]);
      }
      const isDiff = (r, c) => differing.some(([rr, cc]) => rr === r && cc === c);
      const diff = fused["2"].map((row, r) => row.map((v, c) => v - fused["3"][r][c]));
      const [lo, hi] = range([...digits.map((d) => fused[d]), ...digits.flatMap((d) => maps[d])]);
      const spread = Math.max(...range([diff]).map(Math.abs)) || 1;
      const box = $("fusion-grids");
      box.replaceChildren();
      for (const d of digits) {
        const group = el("div", { class: "grids digit" });
        maps[d].forEach((m, i) => {
          group.append(el("figure", {}, el("figcaption", {}, `digit ${d}: map ${i + 1}`),
            valueGrid(m, `digit ${d}, map ${i + 1}`, `fusion-map-${d}-${i}`, null, lo, hi, null, "ink")));
        });
        group.append(el("figure", {},
          el("figcaption", {}, `fused ${d} = ${fmtG(state.w1)}·map1 + ${fmtG(state.w2)}·map2`),
          valueGrid(fused[d], `fused ${d}`, `fusion-fused-${d}`, null, lo, hi, isDiff, "ink")));
        box.append(group);
      }
      box.append(el("figure", {}, el("figcaption", {}, "fused 2 − fused 3"),
        valueGrid(diff, "fused 2 minus fused 3", "fusion-difference", null, -spread, spread, isDiff)));

      const summary = $("fusion-summary");
      summary.dataset.differing = differing.map(([r, c]) => `${r},${c}`).join(";");
      if (differing.length === 0) {
        summary.textContent = "The fused 2 and the fused 3 are equal: with these weights nothing " +
          "tells the digits apart (map 1 is the same for both digits; all the difference is in map 2).";
      } else {
        const parts = differing.map(([r, c]) => {
          const owners = digits.filter((d) => fused[d][r][c] !== 0);
          return `(${r},${c}): fused 2 = ${fmtG(fused["2"][r][c])}, fused 3 = ${fmtG(fused["3"][r][c])}` +
            (owners.length === 1 ? `, a stroke there means a ${owners[0]}` : "");
        });
        summary.textContent = `The fused maps differ at ${differing.length} pixel` +
          `${differing.length === 1 ? "" : "s"} (row, column from 0): ${parts.join("; ")}.`;
      }
    }

    // The seed's inverted rule, with the library's fused maps (a, b, weights as embedded).
    const [cr, cc] = F.claim_pixel;
    const owners = digits.filter((d) => F.combined[d][cr][cc] !== 0);
    const other = F.differing.filter(([r, c]) => !(r === cr && c === cc))
      .map(([r, c]) => `(${r},${c})`).join(", ");
    $("fusion-notes").append(
      el("p", { class: "seed-note", id: "fusion-inverted" },
        el("strong", {}, "The seed's rule is inverted: "),
        `it says a b at (${cr},${cc}) means a 2 and no b there means a 3. Computed ` +
        `(onebyone.explain.fusion_example), the fused map has a stroke at (${cr},${cc}) only for ` +
        `the ${owners.join(" and the ") || "neither digit"}; the 2 has its stroke at ${other}.`),
      el("p", { class: "seed-note" },
        el("strong", {}, "Also in the seed: "),
        "the second caption says \"Feature map 1 of digit 2 + Feature map 2 of digit 2\", but those " +
        "are the maps of the 3; and each pixel of map 1 is combined with the pixel at the same " +
        "place in map 2, not with every pixel of map 2."),
    );

    update();
  }

  // ------------------------------------------------------------------ 4. calculator

  /** Parameters and MACs of a k x k convolution, stride 1, "same" padding, with bias
   * (onebyone.conv_cost(c, k_out, kernel, input_size=size, padding="same")). */
  function convCost(cIn, cOut, kernel, size) {
    const taps = BigInt(kernel) * BigInt(kernel);
    const weights = BigInt(cOut) * BigInt(cIn) * taps;
    return {
      params: weights + BigInt(cOut),
      macs: BigInt(cOut) * BigInt(size) * BigInt(size) * BigInt(cIn) * taps,
    };
  }

  function calculatorSection() {
    const K = DATA.costs;
    const fields = [
      ["in_channels", "input maps C", 1, 65536],
      ["out_channels", "output maps K", 1, 65536],
      ["size", "map size H = W", 1, 4096],
      ["kernel_size", "kernel k × k", 1, 7],
      ["reduced", "reduced to R maps", 1, 65536],
    ];
    const inputs = {};
    const controls = $("calc-controls");
    const presets = $("calc-presets");
    for (const [key, label, min, max] of fields) {
      let input;
      if (key === "kernel_size") {
        input = el("select", { id: `calc-${key}` },
          [1, 3, 5, 7].map((k) => el("option", { value: String(k) }, `${k}×${k}`)));
        input.addEventListener("change", update);
      } else {
        input = el("input", { type: "number", id: `calc-${key}`, min: String(min), max: String(max),
          step: "1", inputmode: "numeric" });
        input.addEventListener("input", update);
      }
      inputs[key] = { input, label, min, max };
      controls.insertBefore(el("span", { class: "control" },
        el("label", { for: input.id }, label), input), presets);
    }

    function setInputs(values) {
      for (const key of Object.keys(inputs)) inputs[key].input.value = String(values[key]);
      update();
    }
    const presetList = [
      ["GoogLeNet 5×5 branch", K.googlenet_5x5.inputs],
      ["GoogLeNet 3×3 branch", K.googlenet_3x3.inputs],
    ];
    for (const [label, values] of presetList) {
      presets.append(el("button", { type: "button", onclick: () => setInputs(values) }, label));
    }

    function read() {
      const values = {};
      const errors = [];
      for (const [key, { input, label, min, max }] of Object.entries(inputs)) {
        const text = input.value.trim();
        const ok = /^\d+$/.test(text) && Number(text) >= min && Number(text) <= max;
        input.setAttribute("aria-invalid", ok ? "false" : "true");
        if (ok) values[key] = Number(text);
        else errors.push(`${label}: expected a whole number from ${min} to ${max}, received "${text}"`);
      }
      return [values, errors];
    }

    function numberCell(value, id) {
      return el("td", { id, "data-value": BigInt(value).toString() }, int(value));
    }

    function update() {
      const [v, errors] = read();
      const body = $("calc-table").querySelector("tbody");
      const error = $("calc-error");
      const bars = $("calc-bars");
      if (errors.length) {
        error.hidden = false;
        error.textContent = errors.join("; ");
        body.replaceChildren();
        bars.replaceChildren();
        $("calc-summary").textContent = "";
        return;
      }
      error.hidden = true;
      const k = v.kernel_size;
      const direct = convCost(v.in_channels, v.out_channels, k, v.size);
      const reduce = convCost(v.in_channels, v.reduced, 1, v.size);
      const after = convCost(v.reduced, v.out_channels, k, v.size);
      const total = { params: reduce.params + after.params, macs: reduce.macs + after.macs };
      const rows = [
        ["direct", `${k}×${k} convolution, ${v.in_channels} → ${v.out_channels}`, direct],
        ["reduce", `1×1 reduction, ${v.in_channels} → ${v.reduced}`, reduce],
        ["after", `then ${k}×${k} convolution, ${v.reduced} → ${v.out_channels}`, after],
        ["total", "1×1 reduction, then the " + `${k}×${k}: total`, total],
      ];
      body.replaceChildren(...rows.map(([id, label, cost]) =>
        el("tr", { class: id === "total" ? "total" : null },
          el("td", {}, label),
          numberCell(cost.params, `calc-${id}-params`),
          numberCell(cost.macs, `calc-${id}-macs`))));

      const ratio = Number(total.macs) / Number(direct.macs);
      $("calc-summary").textContent =
        `Input ${v.in_channels}×${v.size}×${v.size}, output ${v.out_channels}×${v.size}×${v.size}. ` +
        `Reducing to ${v.reduced} maps first takes ${percent(total.macs, direct.macs)} of the MACs ` +
        (ratio < 1 ? `(${(1 / ratio).toFixed(2)}× fewer)` : `(${ratio.toFixed(2)}× more)`) +
        ` and ${percent(total.params, direct.params)} of the parameters.`;

      bars.replaceChildren(...["params", "macs"].map((what) => {
        const max = Number(direct[what] > total[what] ? direct[what] : total[what]);
        const seg = (value, cls) =>
          el("span", { class: `seg ${cls}`, style: `width:${(100 * Number(value)) / max}%` });
        return el("div", { class: "bar-group" },
          el("h3", {}, what === "params" ? "parameters" : "MACs (multiply-accumulates)"),
          el("div", { class: "hbar" }, el("span", {}, `${k}×${k} alone`),
            el("span", { class: "track", role: "img", "aria-label": `${k}×${k} alone: ${int(direct[what])}` },
              seg(direct[what], "conv")),
            el("span", { class: "value" }, int(direct[what]))),
          el("div", { class: "hbar" }, el("span", {}, `1×1 to ${v.reduced}, then ${k}×${k}`),
            el("span", { class: "track", role: "img",
              "aria-label": `1×1 reduction ${int(reduce[what])} plus ${k}×${k} ${int(after[what])}` },
              seg(reduce[what], "pointwise"), seg(after[what], "conv")),
            el("span", { class: "value" }, `${int(reduce[what])} (1×1) + ${int(after[what])} = ${int(total[what])}`)));
      }), el("ul", { class: "legend bar-legend" },
        el("li", {}, el("span", { class: "swatch seg pointwise" }), "the 1×1 reduction"),
        el("li", {}, el("span", { class: "swatch seg conv" }), `the ${k}×${k} convolution`)));
    }

    // the seeds' reductions and the bottleneck, measured by the library
    const measured = $("calc-measured-body");
    const red = el("table", { class: "numbers", id: "calc-reductions" },
      el("thead", {}, el("tr", {}, ["case", "input", "output", "parameters", "MACs", "output / input memory"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, K.reductions.map((r) => el("tr", {},
        el("td", {}, r.title), el("td", {}, r.input_shape.join("×")), el("td", {}, r.output_shape.join("×")),
        el("td", { "data-value": r.params }, int(r.params)), el("td", { "data-value": r.macs }, int(r.macs)),
        el("td", {}, percent(r.output_bytes, r.input_bytes))))));
    const B = K.bottleneck;
    const bott = el("table", { class: "numbers", id: "calc-bottleneck" },
      el("thead", {}, el("tr", {}, ["design (input " + B.input_shape.join("×") + ")", "parameters", "MACs"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {},
        el("tr", {}, el("td", {}, "1×1 reduce → 3×3 → 1×1 expand"),
          el("td", {}, int(B.bottleneck.params)), el("td", {}, int(B.bottleneck.macs))),
        el("tr", {}, el("td", {}, "plain 3×3"),
          el("td", {}, int(B.plain.params)), el("td", {}, int(B.plain.macs)))));
    const g = K.googlenet_5x5;
    measured.append(
      el("p", {}, `GoogLeNet's 5×5 branch (onebyone.conv_cost): ${int(g.direct.macs)} MACs direct, ` +
        `${int(g.reduced_total.macs)} with a 1×1 reduction to ${g.inputs.reduced} maps first.`),
      el("div", { class: "scroll" }, red),
      el("p", {}, "Seed 001's bottleneck against a plain 3×3 of the same width:"),
      el("div", { class: "scroll" }, bott));

    setInputs(K.googlenet_5x5.inputs);
  }

  // ------------------------------------------------------------------ 5. per-pixel linear layer

  function linearSection() {
    const L = DATA.fc;
    const N = L.x.length;
    const C = L.x[0].length;
    const H = L.x[0][0].length;
    const Wd = L.x[0][0][0].length;
    const Kout = L.weight.length;
    const state = { n: L.pixel[0], r: L.pixel[1], c: L.pixel[2] };

    /** The Linear layer on one pixel's channel vector: W x + b. */
    const linear = (x) => L.weight.map((row, k) => row.reduce((s, w, ch) => s + w * x[ch], 0) + L.bias[k]);
    const pixelVector = (n, r, c) => L.x[n].map((m) => m[r][c]);

    const select = $("linear-image");
    for (let n = 0; n < N; n++) select.append(el("option", { value: String(n) }, String(n)));
    select.value = String(state.n);
    select.addEventListener("change", () => {
      state.n = Number(select.value);
      render();
    });

    const pixels = $("linear-pixels");
    pixels.style.gridTemplateColumns = `repeat(${Wd}, 1fr)`;
    const buttons = [];
    for (let r = 0; r < H; r++) for (let c = 0; c < Wd; c++) {
      const b = el("button", { type: "button", id: `linear-pixel-${r}-${c}`, "aria-pressed": "false",
        "aria-label": `pixel row ${r}, column ${c}`,
        onclick: () => { state.r = r; state.c = c; render(); } }, `(${r},${c})`);
      buttons.push([r, c, b]);
      pixels.append(b);
    }

    const vectorTable = (values, label, id, digits) => el("table", { class: "grid", id, "aria-label": label },
      el("tbody", {}, values.map((v, i) => el("tr", {}, el("th", { scope: "row" }, String(i)),
        el("td", { class: "cell", "data-value": String(v) }, fixed(v, digits))))));

    function render() {
      const { n, r, c } = state;
      for (const [rr, cc, b] of buttons) b.setAttribute("aria-pressed", String(rr === r && cc === c));
      const x = pixelVector(n, r, c);
      const y = linear(x);
      const conv = L.conv_output[n].map((m) => m[r][c]);
      const diff = Math.max(...y.map((v, k) => Math.abs(v - conv[k])));
      const [lo, hi] = range([L.weight]);
      const detail = $("linear-detail");
      detail.replaceChildren(
        el("p", {}, `Pixel (n=${n}, row ${r}, column ${c}): its ${C} channel values are one row for the ` +
          `Linear(in_features=${C}, out_features=${Kout}) layer.`),
        el("div", { class: "grids" },
          el("figure", {}, el("figcaption", {}, "x (C values)"), vectorTable(x, "x", "linear-x", 4)),
          el("figure", {}, el("figcaption", {}, `W (${Kout}×${C}), shared`),
            valueGrid(L.weight, "W", "linear-w", 3, lo, hi)),
          el("figure", {}, el("figcaption", {}, "b"), vectorTable(L.bias, "b", "linear-b", 3)),
          el("figure", {}, el("figcaption", {}, "W·x + b (Linear, computed here)"),
            vectorTable(y, "Linear output", "linear-y", 4)),
          el("figure", {}, el("figcaption", {}, "Conv1x1 output (library)"),
            vectorTable(conv, "Conv1x1 output", "linear-conv", 4))),
        el("p", { class: "readout", id: "linear-pixel-diff", "data-value": String(diff) },
          `max |Linear − Conv1x1| at this pixel: ${diff.toExponential(1)}`));

      let worst = 0;
      for (let nn = 0; nn < N; nn++) for (let rr = 0; rr < H; rr++) for (let cc = 0; cc < Wd; cc++) {
        const yy = linear(pixelVector(nn, rr, cc));
        yy.forEach((v, k) => { worst = Math.max(worst, Math.abs(v - L.conv_output[nn][k][rr][cc])); });
      }
      const summary = $("linear-summary");
      summary.dataset.value = String(worst);
      summary.textContent = `The Linear layer applied here at each of the ${N * H * Wd} pixels ` +
        `against the library's Conv1x1 on the whole ${N}×${C}×${H}×${Wd} input: ` +
        `max |difference| = ${worst.toExponential(1)} over ${N * Kout * H * Wd} outputs ` +
        "(the library ran in float32; the page adds in double precision).";
    }
    render();
  }

  // ------------------------------------------------------------------ 6. real networks

  function modelsSection() {
    const models = DATA.models;
    const select = $("models-select");
    models.forEach((m, i) => select.append(el("option", { value: String(i) }, m.name)));
    const chart = $("models-chart");
    const categories = ["pointwise", "conv", "depthwise", "grouped", "linear"];
    const names = { pointwise: "1×1 (pointwise)", conv: "k×k dense", depthwise: "depthwise",
      grouped: "grouped", linear: "linear (classifier)" };
    let model = models[0];
    let selected = 0;

    function describe(i) {
      const layer = model.layers[i];
      const kernel = layer.kernel ? `${layer.kernel[0]}×${layer.kernel[1]} ` : "";
      const out = $("models-layer");
      out.dataset.index = i;
      out.dataset.macs = layer.macs;
      out.textContent = `layer ${i + 1} of ${model.layers.length}: ${layer.name || model.name} — ` +
        `${names[layer.category] || layer.category} ${kernel}(${layer.op}), output ${layer.output_shape.join("×")}: ` +
        `${int(layer.macs)} MACs (${percent(layer.macs, model.macs)} of the model), ${int(layer.params)} parameters`;
      chart.querySelectorAll(".bar.selected").forEach((b) => b.classList.remove("selected"));
      chart.children[i].classList.add("selected");
      selected = i;
    }

    function render() {
      model = models[Number(select.value)];
      const sums = {};
      for (const layer of model.layers) sums[layer.category] = (sums[layer.category] || 0) + layer.macs;
      const summary = $("models-summary");
      summary.dataset.macs = model.macs;
      summary.dataset.pointwiseMacs = sums.pointwise || 0;
      summary.textContent = `${model.name} at ${model.input_shape.join("×")}: ${int(model.macs)} MACs, ` +
        `${int(model.params)} parameters. The 1×1 layers: ${int(sums.pointwise || 0)} MACs ` +
        `(${percent(sums.pointwise || 0, model.macs)}) and ${int(model.pointwise_params)} parameters ` +
        `(${percent(model.pointwise_params, model.params)}).`;
      $("models-legend").replaceChildren(...categories.filter((c) => sums[c]).map((c) =>
        el("li", { "data-category": c, "data-macs": sums[c] },
          el("span", { class: `swatch ${c}` }),
          `${names[c]}: ${int(sums[c])} MACs (${percent(sums[c], model.macs)})`)));
      const max = Math.max(...model.layers.map((l) => l.macs));
      chart.replaceChildren(...model.layers.map((layer, i) => {
        const bar = el("div", { class: `bar ${layer.category}`, "data-index": i,
          style: `height:${((100 * layer.macs) / max).toFixed(2)}%` });
        bar.addEventListener("mouseenter", () => describe(i));
        bar.addEventListener("click", () => describe(i));
        return bar;
      }));
      describe(0);
    }

    chart.addEventListener("keydown", (event) => {
      const n = model.layers.length;
      const moves = { ArrowRight: selected + 1, ArrowLeft: selected - 1, Home: 0, End: n - 1,
        PageUp: selected - 10, PageDown: selected + 10 };
      if (!(event.key in moves)) return;
      event.preventDefault();
      describe(Math.max(0, Math.min(n - 1, moves[event.key])));
    });
    select.addEventListener("change", render);
    render();
  }

  // ------------------------------------------------------------------ start

  function start() {
    if (!DATA) {
      const error = $("load-error");
      error.hidden = false;
      error.textContent = "data.js did not load: write the page again with onebyone explain --html DIR.";
      return;
    }
    workedSection();
    depthSection();
    fusionSection();
    calculatorSection();
    linearSection();
    modelsSection();
    $("footer-text").textContent = `Numbers computed by onebyone ${DATA.version}. ${DATA.convention}`;
    document.body.dataset.ready = "true";
  }

  start();
})();
