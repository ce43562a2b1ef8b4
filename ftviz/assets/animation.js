/* ftviz animation page: inflates the embedded run, draws the plots and drives playback.
 *
 * Data: #ftviz-meta (JSON) describes the arrays packed in #ftviz-points (base64 of a zlib
 * stream per array, see ftviz/render/codec.py:encode_blob): per array its dtype, shape, offset and
 * layout (plain; delta: zigzag differences along the frame axis; points: stored transposed).
 * Bytes of multi-byte values are split into planes (all low bytes, then all high bytes).
 *
 * Frames are shown by easing every point from where it is on screen to the target frame's
 * position (goTo); playback chains such moves with a short hold on each frame.
 *
 * window.ftviz exposes the state for scripts and tests: ready (and readyMs, timings: ms
 * since navigation), frame (the frame shown or being moved to), settled (no move running),
 * goTo(frame, ms), play(), pause(), isPlaying(), setColorBy(mode), setFitFrames(on), setCards(kind),
 * pointsOf(frame) and displayed() (coordinates on screen), thumbnailsLoaded (and
 * trainThumbnailsLoaded: the training panel's sheet), draws (scatter redraws so far, for
 * measuring playback), live (a served page's run status and its updates).
 *
 * The training panel (#training-card, meta.training from train_suspicion.parquet) is static:
 * the training set's most suspicious labels, built once (and again when a live update brings
 * a new list), not per frame.
 *
 * A page served by `ftviz serve` for a run still being analysed carries #ftviz-live (the
 * status URL): it polls that twice a second while the run is live and, when the run's revision changes,
 * fetches <status URL>/data (the same meta and packed points) and redraws in place, keeping
 * the frame shown and the play state. animation.html has no #ftviz-live and never polls.
 */
"use strict";
(function () {
  const byId = (id) => document.getElementById(id);
  const meta = JSON.parse(byId("ftviz-meta").textContent);
  const api = (window.ftviz = { ready: false, frame: 0, settled: true, meta: meta, timings: {} });
  const mark = (name) => { api.timings[name] = Math.round(performance.now()); };
  mark("script");
  let T = meta.T; // grows while a served run is live
  const N = meta.N;

  // ---- decoding ---------------------------------------------------------------------
  function base64Bytes(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  async function inflate(bytes) {
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser cannot unpack the page's data (no DecompressionStream): " +
        "open it in a current Chrome, Edge, Firefox or Safari");
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  const TYPES = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, int32: Int32Array, float32: Float32Array };

  /** One array from its inflated bytes (planes, maybe frame differences) to a typed array. */
  function unpack(planes, d) {
    const Type = TYPES[d.dtype];
    if (!Type) throw new Error("unknown dtype " + d.dtype);
    if (planes.length !== d.raw_bytes) throw new Error("array " + d.name + " is damaged: rerun ftviz render");
    const size = Type.BYTES_PER_ELEMENT;
    const count = d.raw_bytes / size;
    let values;
    if (size === 1) {
      values = planes;
    } else {
      const bytes = new Uint8Array(d.raw_bytes);
      for (let b = 0; b < size; b++) {
        const plane = planes.subarray(b * count, (b + 1) * count);
        for (let i = 0, j = b; i < count; i++, j += size) bytes[j] = plane[i];
      }
      values = new Type(bytes.buffer);
    }
    if (d.layout === "delta" && d.shape[0] > 1) {
      // First frame as is, then zigzag-coded differences to the previous frame; the typed
      // array's unsigned arithmetic wraps exactly as the encoder's did.
      const stride = count / d.shape[0];
      for (let i = stride; i < count; i++) {
        const z = values[i];
        values[i] = values[i - stride] + ((z >>> 1) ^ -(z & 1));
      }
    } else if (d.layout === "points") {
      // Stored (N, T): each point's values over time; the page reads (T, N).
      const [frames, points] = d.shape;
      const byFrame = new Type(count);
      for (let i = 0; i < points; i++) for (let t = 0; t < frames; t++) byFrame[t * points + i] = values[i * frames + t];
      values = byFrame;
    }
    return values;
  }

  /** A page's data: its arrays unpacked and the coordinates decoded, {arrays, X, Y}. */
  async function decode(d, pointsText) {
    const packed = base64Bytes(pointsText.trim());
    const inflated = await Promise.all(d.arrays.map((a) => inflate(packed.subarray(a.offset, a.offset + a.bytes))));
    const unpacked = {};
    d.arrays.forEach((a, k) => { unpacked[a.name] = unpack(inflated[k], a); });
    const coords = unpacked.coords;
    delete unpacked.coords;
    const x = new Float32Array(d.T * N), y = new Float32Array(d.T * N);
    // Codes on each frame's own grid: coordinate = origin[t] + code * scale[t].
    for (let t = 0, j = 0; t < d.T; t++) {
      const [x0, y0] = d.axes.origin[t], [sx, sy] = d.axes.scale[t];
      for (let i = t * N; i < (t + 1) * N; i++, j += 2) {
        x[i] = x0 + coords[j] * sx;
        y[i] = y0 + coords[j + 1] * sy;
      }
    }
    return { arrays: unpacked, X: x, Y: y };
  }

  // ---- state ------------------------------------------------------------------------
  let X, Y; // (T * N) float32 coordinates, frame-major
  let arrays = {};
  const DX = new Float32Array(N); // coordinates on screen
  const DY = new Float32Array(N);
  let colorBy = meta.colorBy;
  // The card strip: the frame's top outliers, or the most suspicious labels (suspicion.parquet).
  let cards = meta.suspicion ? "suspicion" : "outliers";
  let cardsChosen = false; // the viewer picked the card list (a live update then keeps it)
  const cardIds = (t) => (cards === "suspicion" ? meta.suspicion.top.map((entry) => entry.id) : meta.top[t]);
  let groupsCache = new Map();
  let anim = null;
  let playing = false;
  let holdUntil = 0;
  let focusId = -1;
  let rafPending = false;
  let dirty = false;
  let sheet = null;
  let trainSheet = null; // the training panel's sprite sheet (#ftviz-train-thumbnails), card j = thumbnail j
  let generated = {}; // frame index -> data URL of the generated-sample grid, read once parsed
  const stepToEval = new Map();

  let fitFrames = meta.axesMode === "per_frame";
  let FX = null, FY = null; // frames scaled to fill the plot, made on first use
  const frameX = (t) => (fitFrames ? FX : X).subarray(t * N, (t + 1) * N);
  const frameY = (t) => (fitFrames ? FY : Y).subarray(t * N, (t + 1) * N);
  const axisRanges = () => (fitFrames ? meta.fit.range : meta.axes.range);

  function makeFitted() {
    if (FX) return;
    FX = new Float32Array(T * N);
    FY = new Float32Array(T * N);
    for (let t = 0; t < T; t++) {
      const [cx, cy] = meta.fit.centre[t], s = meta.fit.scale[t];
      for (let i = t * N; i < (t + 1) * N; i++) {
        FX[i] = (X[i] - cx) / s;
        FY[i] = (Y[i] - cy) / s;
      }
    }
  }

  /** Fixed axes for the whole run (default), or each frame scaled to fill the plot. */
  function setFitFrames(on) {
    fitFrames = Boolean(on);
    if (fitFrames) makeFitted();
    byId("fit-frames").checked = fitFrames;
    const [xr, yr] = axisRanges();
    Plotly.relayout(scatter, { "xaxis.range": xr.slice(), "yaxis.range": yr.slice() });
    goTo(api.frame, 0);
  }
  const clampFrame = (k) => Math.max(0, Math.min(T - 1, Math.round(k)));
  const ease = (u) => (u < 0.5 ? 4 * u * u * u : 1 - Math.pow(-2 * u + 2, 3) / 2);
  const reducedMotion = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  // Quantised scores: code 255 = missing, else range[0] + code * span / (levels - 1).
  const scoreScales = () => ({
    outlier: { range: meta.outlierRange, top: (meta.outlierLevels || 255) - 1, perFrame: true },
    quality: { range: meta.qualityRange, top: (meta.qualityLevels || 255) - 1, perFrame: true },
    suspicion: { range: meta.suspicionRange, top: 254, perFrame: false },
  });
  let SCORES = scoreScales();
  function scoreAt(name, t, i) {
    const score = SCORES[name];
    const code = arrays[name][score.perFrame ? t * N + i : i];
    if (code === undefined || code === 255) return NaN;
    return score.range[0] + (code * (score.range[1] - score.range[0])) / score.top;
  }
  const CONTINUOUS = { outlier_score: "outlier", suspicion: "suspicion" };
  const predictedAt = (t, i) => {
    const value = arrays.predicted[t * N + i];
    return value === meta.missingLabel ? -1 : value;
  };
  // Text nodes take the names as typed (classNamesText); plotly takes them HTML-escaped (classNames).
  const classText = () => meta.classNamesText || meta.classNames;
  const className = (c) => (c >= 0 && c < classText().length ? classText()[c] : c < 0 ? "–" : String(c));
  const fmt = (v, digits) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits));

  // ---- colour modes: groups of point ids, one scatter trace each --------------------------
  let modeLabels = new Map(meta.colorModes);
  function modeInfo(mode) {
    const legend = modeLabels.get(mode) || mode;
    if (mode === "label" || mode === "prediction") return { names: meta.classNames, colors: meta.palette, legend: legend };
    if (mode === "label_issue" || mode === "noise") return { names: meta.flagNames[mode], colors: meta.flagColors[mode], legend: legend };
    return { names: [legend], colors: null, legend: legend };
  }

  function groupsFor(mode, t) {
    const isStatic = mode === "label" || mode === "noise" || mode === "suspicion";
    const key = mode + ":" + (isStatic ? 0 : t);
    let groups = groupsCache.get(key);
    if (groups) return groups;
    if (CONTINUOUS[mode]) {
      // One trace, drawn from typical to atypical so the outliers sit on top.
      const ids = Int32Array.from({ length: N }, (_, i) => i);
      const codes = mode === "suspicion" ? arrays.suspicion : arrays.outlier.subarray(t * N, (t + 1) * N);
      const key = (i) => (codes[i] === 255 ? -1 : codes[i]);
      ids.sort((a, b) => key(a) - key(b));
      groups = [ids];
    } else {
      const n = modeInfo(mode).names.length;
      let category;
      if (mode === "label") category = (i) => arrays.given[i];
      else if (mode === "prediction") category = (i) => predictedAt(t, i);
      else if (mode === "label_issue") category = (i) => arrays.issue[t * N + i];
      else category = (i) => (arrays.noisy ? arrays.noisy[i] : 0);
      const counts = new Int32Array(n + 1);
      const cats = new Int32Array(N);
      for (let i = 0; i < N; i++) {
        let c = category(i);
        if (c < 0 || c >= n) c = n; // no prediction at this frame
        cats[i] = c;
        counts[c]++;
      }
      groups = Array.from(counts, (count) => new Int32Array(count));
      const filled = new Int32Array(n + 1);
      for (let i = 0; i < N; i++) groups[cats[i]][filled[cats[i]]++] = i;
    }
    groupsCache.set(key, groups);
    return groups;
  }

  // ---- scatter --------------------------------------------------------------------------
  const scatter = byId("scatter");
  let traceCount = 0;

  function scatterTraces() {
    const info = modeInfo(colorBy);
    const size = meta.pointSize;
    const traces = [];
    if (CONTINUOUS[colorBy]) {
      const outlier = colorBy === "outlier_score";
      traces.push({
        type: "scattergl", mode: "markers", name: info.legend, x: [], y: [], hoverinfo: "none", showlegend: false,
        marker: {
          size: size, opacity: 0.9, color: [], colorscale: outlier ? meta.outlierColorscale : meta.suspicionColorscale,
          cmin: outlier ? meta.colorRange[0] : meta.suspicionRange[0], cmax: outlier ? meta.colorRange[1] : meta.suspicionRange[1],
          colorbar: { title: { text: outlier ? "outlier<br>score" : "label<br>suspicion", side: "top" }, thickness: 12, len: 0.55, y: 0.45, outlinewidth: 0 },
        },
      });
    } else {
      const groups = groupsFor(colorBy, api.frame);
      for (let c = 0; c < info.names.length; c++) {
        traces.push({
          type: "scattergl", mode: "markers", name: info.names[c], x: [], y: [], hoverinfo: "none",
          marker: { size: size, opacity: 0.85, color: info.colors[c % info.colors.length] },
        });
      }
      if (groups.length > info.names.length && groups[info.names.length].length > 0) {
        traces.push({ type: "scattergl", mode: "markers", name: "no score", x: [], y: [], hoverinfo: "none",
          marker: { size: size, opacity: 0.6, color: "#999999" } });
      }
    }
    traces.push({
      type: "scattergl", mode: "markers", name: cards === "suspicion" ? "most suspicious" : "top outliers", x: [], y: [], hoverinfo: "none",
      marker: { symbol: "circle-open", size: size * 2 + 7, color: "#111111", line: { width: 1.6 } },
    });
    traces.push({
      type: "scattergl", mode: "markers", name: "selected", x: [], y: [], hoverinfo: "skip", showlegend: false,
      marker: { symbol: "circle-open", size: size * 3 + 14, color: "#1f5fa8", line: { width: 3 } },
    });
    traceCount = traces.length;
    const points = pointArrays();
    traces.forEach((trace, k) => { trace.x = points.xs[k]; trace.y = points.ys[k]; });
    if (points.colors) traces[0].marker.color = points.colors;
    return traces;
  }

  function scatterLayout() {
    const grid = { showgrid: true, gridcolor: "#eef0f4", zeroline: false, showticklabels: false, ticks: "", showline: false };
    return {
      margin: { l: 6, r: 4, t: 30, b: 6 },
      xaxis: Object.assign({ range: axisRanges()[0].slice(), autorange: false }, grid),
      yaxis: Object.assign({ range: axisRanges()[1].slice(), autorange: false, scaleanchor: "x", scaleratio: 1 }, grid),
      legend: {
        title: { text: modeInfo(colorBy).legend, font: { size: 12 } }, itemsizing: "constant", font: { size: 12 },
        bgcolor: "rgba(255,255,255,0)", x: 1.01, xanchor: "left", y: 1, yanchor: "top",
      },
      hovermode: "closest",
      dragmode: "pan",
      plot_bgcolor: "#fafbfd",
      paper_bgcolor: "#ffffff",
      font: { family: getComputedStyle(document.documentElement).fontFamily, color: "#1f2430" },
      uirevision: "scatter",
    };
  }

  /** Coordinates (and outlier colours) on screen for every scatter trace, in trace order. */
  function pointArrays() {
    const t = api.frame;
    const groups = groupsFor(colorBy, t);
    const xs = [], ys = [];
    for (let g = 0; g < traceCount - 2; g++) {
      const ids = groups[g];
      const x = new Float32Array(ids.length), y = new Float32Array(ids.length);
      for (let j = 0; j < ids.length; j++) { x[j] = DX[ids[j]]; y[j] = DY[ids[j]]; }
      xs.push(x);
      ys.push(y);
    }
    const top = cardIds(t);
    xs.push(Float32Array.from(top, (i) => DX[i]));
    ys.push(Float32Array.from(top, (i) => DY[i]));
    xs.push(focusId >= 0 ? [DX[focusId]] : []);
    ys.push(focusId >= 0 ? [DY[focusId]] : []);
    let colors = null;
    if (CONTINUOUS[colorBy]) {
      const ids = groups[0];
      colors = new Float32Array(ids.length);
      for (let j = 0; j < ids.length; j++) colors[j] = scoreAt(CONTINUOUS[colorBy], t, ids[j]);
    }
    return { xs: xs, ys: ys, colors: colors };
  }

  function drawScatter() {
    dirty = false;
    api.draws = (api.draws || 0) + 1;
    const points = pointArrays();
    const indices = points.xs.map((_, k) => k);
    const update = { x: points.xs, y: points.ys };
    if (points.colors) {
      // restyle cycles short value lists over the traces: give every trace its colour.
      update["marker.color"] = indices.map((k) => (k === 0 ? points.colors : k === traceCount - 2 ? "#111111" : "#1f5fa8"));
    }
    Plotly.restyle(scatter, update, indices);
  }

  function idForPoint(curve, point) {
    if (curve === traceCount - 2) return cardIds(api.frame)[point];
    if (curve >= traceCount - 2) return -1;
    const groups = groupsFor(colorBy, api.frame);
    return groups[curve] ? groups[curve][point] : -1;
  }

  // ---- thumbnails -----------------------------------------------------------------------
  /** Thumbnail ``index`` of a sprite sheet (default: the probe's, index = sample id) on a
   * canvas; the grey placeholder while the sheet loads or where there is none. */
  function drawThumbnail(canvas, index, info = meta.thumbnails, image = sheet) {
    const context = canvas.getContext("2d");
    context.fillStyle = "#eeeeee";
    context.fillRect(0, 0, canvas.width, canvas.height);
    if (!info || !image || index < 0) return;
    const sx = (index % info.columns) * info.cell;
    const sy = Math.floor(index / info.columns) * info.cell;
    const scale = Math.min(canvas.width / info.width, canvas.height / info.height);
    const w = info.width * scale, h = info.height * scale;
    context.imageSmoothingEnabled = info.width < canvas.width / 2;
    context.drawImage(image, sx, sy, info.width, info.height, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  }

  /** Thumbnails and generated images sit after this script: read them once the parser is there. */
  function loadImages() {
    generated = JSON.parse(byId("ftviz-generated").textContent);
    if (Object.keys(generated).length) updatePanels();
    loadTrainSheet(byId("ftviz-train-thumbnails").textContent.trim());
    const source = byId("ftviz-thumbnails").textContent.trim();
    if (!meta.thumbnails || !source) return;
    const image = new Image();
    image.onload = () => {
      sheet = image;
      api.thumbnailsLoaded = true;
      updateOutliers();
    };
    image.src = source;
  }

  /** The training panel's sheet (a data URL, or "" for none); its cards show placeholders until it loads. */
  let trainSheetLoads = 0; // a sheet that loads after a newer one was asked for is dropped
  function loadTrainSheet(source) {
    const load = ++trainSheetLoads;
    trainSheet = null;
    api.trainThumbnailsLoaded = false;
    drawTraining();
    if (!meta.training || !meta.training.thumbnails || !source) return;
    const image = new Image();
    image.onload = () => {
      if (load !== trainSheetLoads) return;
      trainSheet = image;
      api.trainThumbnailsLoaded = true;
      drawTraining();
    };
    image.src = source;
  }

  // ---- tooltip ------------------------------------------------------------------------------
  const tooltip = byId("tooltip");
  function line(parent, key, value, badge) {
    const row = document.createElement("div");
    const k = document.createElement("span");
    k.className = "k";
    k.textContent = key + " ";
    row.appendChild(k);
    row.appendChild(document.createTextNode(value));
    if (badge) {
      const b = document.createElement("span");
      b.className = "badge " + badge[0];
      b.textContent = badge[1];
      row.appendChild(document.createTextNode(" "));
      row.appendChild(b);
    }
    parent.appendChild(row);
  }

  function showTooltip(id, clientX, clientY) {
    const t = api.frame;
    const text = byId("tooltip-text");
    text.replaceChildren();
    const head = document.createElement("div");
    head.innerHTML = "<b></b>";
    head.firstChild.textContent = "sample #" + id;
    text.appendChild(head);
    const given = arrays.given[id];
    const noisy = arrays.noisy ? arrays.noisy[id] === 1 : false;
    line(text, "given label", className(given), noisy ? ["noise", "injected noise"] : null);
    if (noisy && arrays.true) line(text, "true label", className(arrays.true[id]));
    const predicted = predictedAt(t, id);
    line(text, "prediction", className(predicted), predicted >= 0 && predicted !== given ? ["issue", "≠ given"] : null);
    // Scores as precise as they travel (see OUTLIER_LEVELS and QUALITY_LEVELS in page.py).
    line(text, "outlier score", fmt(scoreAt("outlier", t, id), 2));
    line(text, "label quality", fmt(scoreAt("quality", t, id), 2), arrays.issue[t * N + id] ? ["issue", "label issue"] : null);
    if (arrays.suspicion) line(text, "suspicion", fmt(scoreAt("suspicion", t, id), 3), arrays.flagged && arrays.flagged[id] ? ["issue", "flagged"] : null);
    drawThumbnail(byId("tooltip-thumb"), id);
    tooltip.hidden = false;
    const box = tooltip.getBoundingClientRect();
    let left = clientX + 16, top = clientY + 12;
    if (left + box.width > window.innerWidth - 8) left = clientX - box.width - 16;
    if (top + box.height > window.innerHeight - 8) top = window.innerHeight - box.height - 8;
    tooltip.style.left = Math.max(4, left) + "px";
    tooltip.style.top = Math.max(4, top) + "px";
  }

  // ---- side panels ------------------------------------------------------------------------
  const loss = byId("loss");
  const diagnostics = byId("diagnostics");

  function lossAt(step) {
    const value = stepToEval.get(step);
    return value === undefined ? null : value;
  }

  function lossFigure() {
    const train = meta.metrics.train || {};
    const evaluation = meta.metrics.eval || {};
    const data = [];
    if (train.step && train.loss) {
      data.push({ x: train.step, y: train.loss, name: "train loss", mode: "lines", line: { color: "#9ecae1", width: 1.2 },
        hovertemplate: "step %{x}<br>train loss %{y:.3f}<extra></extra>" });
    }
    if (evaluation.step && evaluation.loss) {
      data.push({ x: evaluation.step, y: evaluation.loss, name: "eval loss", mode: "lines+markers",
        line: { color: "#1f5fa8", width: 2 }, marker: { size: 4 }, hovertemplate: "step %{x}<br>eval loss %{y:.3f}<extra></extra>" });
    }
    const hasAccuracy = Boolean(evaluation.step && evaluation.accuracy && evaluation.accuracy.some((v) => v !== null));
    if (hasAccuracy) {
      data.push({ x: evaluation.step, y: evaluation.accuracy, name: "eval accuracy", yaxis: "y2", mode: "lines+markers",
        line: { color: "#59a14f", width: 2 }, marker: { size: 4 }, hovertemplate: "step %{x}<br>accuracy %{y:.1%}<extra></extra>" });
      if (meta.hasNoise && evaluation.true_accuracy && evaluation.true_accuracy.some((v) => v !== null)) {
        data.push({ x: evaluation.step, y: evaluation.true_accuracy, name: "vs true labels", yaxis: "y2", mode: "lines",
          line: { color: "#59a14f", width: 1.5, dash: "dot" }, hovertemplate: "step %{x}<br>accuracy vs true labels %{y:.1%}<extra></extra>" });
      }
    }
    const layout = {
      margin: { l: 44, r: 44, t: 22, b: 30 },
      xaxis: { title: { text: "step", standoff: 4, font: { size: 11 } }, fixedrange: true, zeroline: false, gridcolor: "#eef0f4", tickfont: { size: 10 } },
      yaxis: { title: { text: "loss", font: { size: 11 } }, fixedrange: true, rangemode: "tozero", gridcolor: "#eef0f4", tickfont: { size: 10 } },
      yaxis2: { visible: hasAccuracy, overlaying: "y", side: "right", range: [0, 1.02], fixedrange: true, showgrid: false, tickformat: ".0%", tickvals: [0, 0.25, 0.5, 0.75, 1],
        title: { text: "accuracy", font: { size: 11 } }, tickfont: { size: 10 } },
      legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom", font: { size: 10.5 }, bgcolor: "rgba(0,0,0,0)" },
      hovermode: "x", dragmode: false, plot_bgcolor: "#ffffff", paper_bgcolor: "#ffffff",
      font: { family: getComputedStyle(document.documentElement).fontFamily, color: "#1f2430" },
    };
    return { data: data, layout: layout };
  }

  function diagnosticsFigure() {
    const d = meta.diagnostics;
    const data = [
      { x: meta.steps, y: d.disparity, name: "disparity", mode: "lines+markers", line: { color: "#f28e2b", width: 1.8 }, marker: { size: 3 },
        hovertemplate: "step %{x}<br>Procrustes disparity %{y:.3f}<extra></extra>" },
      { x: meta.steps, y: d.knn_overlap, name: "kNN overlap", yaxis: "y2", mode: "lines+markers", line: { color: "#7b4fa0", width: 1.8 }, marker: { size: 3 },
        hovertemplate: "step %{x}<br>kNN overlap %{y:.2f}<extra></extra>" },
      { x: meta.steps, y: d.explained_variance, name: "explained variance", yaxis: "y2", mode: "lines", line: { color: "#9a9a9a", width: 1.2, dash: "dot" },
        hovertemplate: "step %{x}<br>explained variance %{y:.2f}<extra></extra>" },
    ];
    const layout = {
      margin: { l: 44, r: 44, t: 4, b: 18 },
      xaxis: { fixedrange: true, zeroline: false, gridcolor: "#eef0f4", tickfont: { size: 9.5 } },
      yaxis: { fixedrange: true, rangemode: "tozero", gridcolor: "#eef0f4", tickfont: { size: 9.5, color: "#c46a12" }, nticks: 3 },
      yaxis2: { overlaying: "y", side: "right", range: [0, 1.02], fixedrange: true, showgrid: false, tickfont: { size: 9.5, color: "#7b4fa0" }, tickvals: [0, 0.5, 1] },
      showlegend: false, hovermode: "x", dragmode: false, plot_bgcolor: "#ffffff", paper_bgcolor: "#ffffff",
      font: { family: getComputedStyle(document.documentElement).fontFamily, color: "#1f2430" },
    };
    return { data: data, layout: layout };
  }

  let outlierCards = [];
  const cardCount = () => Math.max(meta.top.length ? meta.top[0].length : 0, meta.suspicion ? meta.suspicion.top.length : 0);
  function buildOutlierCards() {
    const container = byId("outliers");
    const k = cardCount();
    container.replaceChildren();
    outlierCards = [];
    container.style.setProperty("--top", String(Math.max(1, k)));
    for (let j = 0; j < k; j++) {
      const card = document.createElement("div");
      card.className = "outlier";
      const canvas = document.createElement("canvas");
      canvas.width = 104;
      canvas.height = 104;
      const side = document.createElement("div");
      side.className = "outlier-side";
      const labels = document.createElement("div");
      labels.className = "outlier-labels";
      card.append(canvas, side, labels);
      card.addEventListener("mouseenter", () => { focusId = Number(card.dataset.id); requestDraw(); });
      card.addEventListener("mouseleave", () => { focusId = -1; requestDraw(); });
      container.appendChild(card);
      outlierCards.push({ card: card, canvas: canvas, side: side, labels: labels });
    }
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function updateOutliers() {
    const t = api.frame;
    const ids = cardIds(t);
    byId("cards-title").textContent = cards === "suspicion" ? "Most suspicious labels" : "Top outliers at this step";
    byId("cards-hint").textContent = cards === "suspicion"
      ? "ranked by suspicion over the whole history; the detector that ranks each highest; red: flagged"
      : "highest kNN outlier score at this step; rank of the score; red: flagged as a label issue";
    outlierCards.forEach((entry, j) => {
      const id = ids[j];
      entry.card.hidden = id === undefined;
      if (id === undefined) return;
      entry.card.dataset.id = id;
      const noisy = arrays.noisy ? arrays.noisy[id] === 1 : false;
      let issue;
      drawThumbnail(entry.canvas, id);
      if (cards === "suspicion") {
        const listed = meta.suspicion.top[j];
        issue = listed.flagged && (listed.issueStep === null || meta.steps[t] >= listed.issueStep);
        entry.side.replaceChildren(element("div", "rank", "#" + listed.rank + " of " + N),
          element("div", "score", fmt(listed.suspicion, 3)));
        if (listed.detector) entry.side.appendChild(element("div", "detector", listed.detector + " #" + listed.detectorRank));
        if (listed.issueStep !== null) entry.side.appendChild(element("div", "detector", "from step " + listed.issueStep));
      } else {
        issue = arrays.issue[t * N + id] === 1;
        entry.side.replaceChildren(element("div", "rank", "#" + (j + 1) + " of " + N), element("div", "score", fmt(meta.topScores[t][j], 3)));
        entry.side.appendChild(element("div", "detector", "kNN outlier"));
      }
      entry.card.classList.toggle("issue", issue);
      if (issue) entry.side.appendChild(element("span", "badge issue", "issue"));
      if (noisy) entry.side.appendChild(element("span", "badge noise", "noise"));
      const text = "label " + className(arrays.given[id]) + " · pred " + className(predictedAt(t, id));
      entry.labels.replaceChildren(element("div", "", "label " + className(arrays.given[id])),
        element("div", "", "pred " + className(predictedAt(t, id))));
      entry.card.title = "sample #" + id + ": " + text + (noisy && arrays.true ? " (true label " + className(arrays.true[id]) + ")" : "");
    });
  }

  // ---- the training set's most suspicious labels (static: meta.training) ----------------------
  function buildTraining() {
    const training = meta.training;
    byId("training-card").hidden = !training;
    const container = byId("training");
    container.replaceChildren();
    if (!training) return;
    byId("training-hint").textContent = training.count + " samples, " + training.flagged + " flagged; red: flagged";
    for (const entry of training.top) {
      const card = element("div", "outlier training-sample");
      card.dataset.id = String(entry.id);
      card.classList.toggle("issue", entry.flagged);
      const canvas = document.createElement("canvas");
      canvas.width = 104;
      canvas.height = 104;
      const side = element("div", "outlier-side");
      side.append(element("div", "rank", "#" + entry.rank + " of " + training.count),
        element("div", "score", fmt(entry.suspicion, 3)));
      if (entry.flagged) side.appendChild(element("span", "badge issue", "issue"));
      if (entry.noisy) side.appendChild(element("span", "badge noise", "noise"));
      // What a retrain does with it (the export's fix column): relabel to the suggestion, or drop.
      if (entry.fix) side.appendChild(element("span", "badge fix", entry.fix));
      // Names as text nodes (classNamesText): a class named like markup shows as typed.
      const labels = element("div", "outlier-labels");
      labels.append(element("div", "sample-id", "id " + entry.id), element("div", "given", "given " + className(entry.given)),
        element("div", "suggested", "suggested " + className(entry.suggested)));
      card.append(canvas, side, labels);
      card.title = "training sample #" + entry.id + ": given " + className(entry.given) + " · suggested " +
        className(entry.suggested) + (entry.noisy && entry.true >= 0 ? " (true label " + className(entry.true) + ")" : "") +
        (entry.issueStep !== null ? " · flagged from step " + entry.issueStep : "") +
        (entry.fix === "relabel" ? " · a retrain relabels it" : entry.fix === "drop" ? " · a retrain drops it" : "");
      container.appendChild(card);
    }
    drawTraining();
  }

  function drawTraining() {
    if (!meta.training) return;
    byId("training").querySelectorAll("canvas").forEach((canvas, j) =>
      drawThumbnail(canvas, j, meta.training.thumbnails, trainSheet));
  }

  function updatePanels() {
    const t = api.frame;
    const step = meta.steps[t];
    byId("frame-slider").value = String(t);
    byId("frame-label").textContent = "step " + step + "  ·  frame " + (t + 1) + " / " + T;
    byId("stat-step").textContent = String(step);
    byId("stat-epoch").textContent = meta.epochs[t] === null ? "" : "epoch " + meta.epochs[t].toFixed(2);
    byId("stat-disparity").textContent = fmt(meta.diagnostics.disparity[t], 3);
    byId("stat-knn").textContent = fmt(meta.diagnostics.knn_overlap[t], 2);
    byId("stat-variance").textContent = meta.diagnostics.explained_variance[t] === null ? "–"
      : (100 * meta.diagnostics.explained_variance[t]).toFixed(0) + "%";
    updateOutliers();
    updateDetectors();
    let source = null;
    for (let k = t; k >= 0 && source === null; k--) if (generated[String(k)]) source = generated[String(k)];
    // The card is laid out from the start when the run has images (no jump once they load).
    byId("generated-card").hidden = meta.generatedFrames.length === 0;
    if (source !== null && byId("generated").src !== source) byId("generated").src = source;
    document.body.dataset.frame = String(t);
  }

  // ---- detector table (detectors.parquet: how each detector finds the injected noise) ----
  const METRICS = [["auroc", "AUROC", 3], ["average_precision", "AP", 3], ["precision", "prec.", 2],
    ["recall", "recall", 2], ["f1", "F1", 2], ["n_flagged", "flagged", 0]];
  function buildDetectors() {
    const rows = meta.detectors;
    byId("detectors-card").hidden = !rows;
    byId("detectors").deleteTHead();
    if (!rows) return;
    const head = byId("detectors").createTHead().insertRow();
    for (const name of ["detector"].concat(METRICS.map((m) => m[1]))) head.appendChild(element("th", "", name));
  }

  /** Whole-history detectors always; single-frame ones at the frame's step. */
  function updateDetectors() {
    const rows = meta.detectors;
    if (!rows) return;
    const step = meta.steps[api.frame];
    const shown = rows.filter((row) => row.step === null || row.step === step);
    const best = Math.max(...shown.map((row) => (row.f1 === null ? -1 : row.f1)));
    const body = document.createElement("tbody");
    for (const row of shown) {
      const tr = body.insertRow();
      tr.dataset.detector = row.detector;
      if (row.f1 !== null && row.f1 === best) tr.className = "best";
      tr.appendChild(element("td", "", row.detector + (row.step === null ? "" : " @ " + row.step)));
      for (const [key, , digits] of METRICS) tr.appendChild(element("td", "num", fmt(row[key], digits)));
    }
    const table = byId("detectors");
    if (table.tBodies.length) table.replaceChild(body, table.tBodies[0]);
    else table.appendChild(body);
  }

  /** Cards: "outliers" (the frame's top kNN outliers) or "suspicion" (most suspicious labels). */
  function setCards(kind) {
    if (kind !== "outliers" && !(kind === "suspicion" && meta.suspicion)) throw new Error("unknown card list " + kind);
    cards = kind;
    byId("cards-by").value = kind;
    updateOutliers();
    return Plotly.react(scatter, scatterTraces(), scatterLayout());
  }

  /** The frame's cursor on a curve plot: an overlay line (and dot), no plotly redraw. */
  function placeCursor(gd, cursor, dot, step, value) {
    const layout = gd._fullLayout;
    if (!layout || !layout.xaxis || !layout.yaxis) return;
    const xa = layout.xaxis, ya = layout.yaxis;
    const x = xa._offset + xa.l2p(step);
    cursor.dataset.step = String(step);
    cursor.style.left = x + "px";
    cursor.style.top = ya._offset + "px";
    cursor.style.height = ya._length + "px";
    if (!dot) return;
    dot.hidden = value === null || value === undefined;
    if (!dot.hidden) {
      dot.style.left = x + "px";
      dot.style.top = ya._offset + ya.l2p(value) + "px";
    }
  }

  /** Move the frame's markers: step label on the scatter, cursors on the curves. */
  function updatePlotMarkers() {
    const t = api.frame;
    const step = meta.steps[t];
    const label = byId("scatter-step");
    label.replaceChildren(element("b", "", "step " + step));
    if (meta.epochs[t] !== null) label.appendChild(element("span", "muted", "  ·  epoch " + meta.epochs[t].toFixed(2)));
    placeCursor(loss, byId("loss-cursor"), byId("loss-dot"), step, lossAt(step));
    placeCursor(diagnostics, byId("diagnostics-cursor"), null, step, null);
  }

  // ---- playback ---------------------------------------------------------------------------
  function requestDraw() {
    dirty = true;
    schedule();
  }

  function schedule() {
    if (!rafPending) {
      rafPending = true;
      requestAnimationFrame(tick);
    }
  }

  function goTo(frame, duration) {
    const target = clampFrame(frame);
    if (duration === undefined) duration = meta.transitionMs;
    const changed = target !== api.frame;
    api.frame = target;
    if (changed) {
      updatePanels();
      updatePlotMarkers();
    }
    if (duration <= 0 || reducedMotion) {
      DX.set(frameX(target));
      DY.set(frameY(target));
      anim = null;
      api.settled = true;
      holdUntil = performance.now() + meta.frameMs * 0.4;
    } else {
      anim = { fromX: DX.slice(), fromY: DY.slice(), start: performance.now(), duration: duration };
      api.settled = false;
    }
    requestDraw();
  }

  function tick(now) {
    rafPending = false;
    if (anim) {
      const u = Math.min(1, (now - anim.start) / anim.duration);
      const e = ease(u);
      const tx = frameX(api.frame), ty = frameY(api.frame);
      for (let i = 0; i < N; i++) {
        DX[i] = anim.fromX[i] + (tx[i] - anim.fromX[i]) * e;
        DY[i] = anim.fromY[i] + (ty[i] - anim.fromY[i]) * e;
      }
      dirty = true;
      if (u >= 1) {
        anim = null;
        api.settled = true;
        holdUntil = now + meta.frameMs * 0.4;
      }
    }
    if (playing && !anim && now >= holdUntil) {
      if (api.frame >= T - 1) pause();
      else goTo(api.frame + 1, meta.frameMs * 0.6);
    }
    if (dirty) drawScatter();
    if (anim || playing) schedule();
  }

  function play() {
    if (playing) return;
    if (api.frame >= T - 1) goTo(0, meta.transitionMs);
    playing = true;
    holdUntil = 0;
    byId("play").textContent = "❚❚ Pause";
    schedule();
  }

  function pause() {
    playing = false;
    byId("play").textContent = "▶ Play";
  }

  function nearestFrame(step) {
    let best = 0;
    for (let t = 1; t < T; t++) if (Math.abs(meta.steps[t] - step) < Math.abs(meta.steps[best] - step)) best = t;
    return best;
  }

  function setColorBy(mode) {
    if (!meta.colorModes.some((m) => m[0] === mode)) throw new Error("unknown colour mode " + mode);
    colorBy = mode;
    byId("color-by").value = mode;
    return Plotly.react(scatter, scatterTraces(), scatterLayout());
  }

  // ---- start ------------------------------------------------------------------------------
  function fillStepToEval() {
    stepToEval.clear();
    const evaluation = meta.metrics.eval || {};
    (evaluation.step || []).forEach((s, k) => { if (evaluation.loss) stepToEval.set(s, evaluation.loss[k]); });
  }

  function fillColorModes() {
    const select = byId("color-by");
    select.replaceChildren();
    for (const [value, label] of meta.colorModes) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = label;
      select.appendChild(option);
    }
    select.value = colorBy;
  }

  async function main() {
    const decoded = await decode(meta, byId("ftviz-points").textContent);
    mark("inflated");
    ({ arrays, X, Y } = decoded);
    if (fitFrames) makeFitted();
    DX.set(frameX(0));
    DY.set(frameY(0));
    mark("decoded");
    fillStepToEval();

    const select = byId("color-by");
    fillColorModes();
    byId("generated-card").hidden = meta.generatedFrames.length === 0;
    document.body.classList.toggle("no-thumbnails", !meta.thumbnails);
    const slider = byId("frame-slider");
    slider.max = String(T - 1);
    buildOutlierCards();
    buildDetectors();
    buildTraining();
    const projection = meta.projection || { method: "pca", name: "PCA" };
    byId("projection").textContent = projection.name + (projection.method === "pca" ? "" : ", each frame started from the previous one's layout");
    byId("projection").dataset.method = projection.method;
    document.body.dataset.projection = projection.method;
    if (projection.method !== "pca") byId("stat-variance-note").textContent = "PCA only";
    const cardSelect = byId("cards-by");
    cardSelect.hidden = !meta.suspicion;
    cardSelect.value = cards;
    cardSelect.addEventListener("change", () => { cardsChosen = true; setCards(cardSelect.value); });

    const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };
    const quiet = { displayModeBar: false, responsive: true };
    const lossFig = lossFigure();
    const diagnosticsFig = diagnosticsFigure();
    await Plotly.newPlot(scatter, scatterTraces(), scatterLayout(), config);
    mark("scatter");
    await Plotly.newPlot(loss, lossFig.data, lossFig.layout, quiet);
    await Plotly.newPlot(diagnostics, diagnosticsFig.data, diagnosticsFig.layout, quiet);
    mark("curves");
    updatePanels();
    updatePlotMarkers();
    for (const plot of [loss, diagnostics]) plot.on("plotly_afterplot", updatePlotMarkers);
    // Plotly follows window resizes only; cards also change size when the layout reflows.
    if (typeof ResizeObserver === "function") {
      const observer = new ResizeObserver((entries) => {
        for (const entry of entries) {
          const gd = entry.target.querySelector(".js-plotly-plot");
          if (gd && entry.contentRect.width > 0) Plotly.Plots.resize(gd);
        }
      });
      document.querySelectorAll(".plot-wrap").forEach((wrap) => observer.observe(wrap));
    }

    scatter.on("plotly_hover", (event) => {
      const point = event.points && event.points[0];
      if (!point) return;
      const id = idForPoint(point.curveNumber, point.pointNumber);
      if (id >= 0) showTooltip(id, event.event.clientX, event.event.clientY);
    });
    scatter.on("plotly_unhover", () => { tooltip.hidden = true; });
    for (const plot of [loss, diagnostics]) {
      plot.on("plotly_click", (event) => {
        const point = event.points && event.points[0];
        if (point) goTo(nearestFrame(Number(point.x)));
      });
    }
    slider.addEventListener("input", () => { pause(); goTo(Number(slider.value)); });
    byId("play").addEventListener("click", () => (playing ? pause() : play()));
    select.addEventListener("change", () => setColorBy(select.value));
    byId("fit-frames").checked = fitFrames;
    byId("fit-frames").addEventListener("change", (event) => setFitFrames(event.target.checked));
    document.addEventListener("keydown", (event) => {
      const tag = event.target && event.target.tagName;
      if (tag === "SELECT" || tag === "INPUT" && event.target !== slider) return;
      if (event.key === " ") { event.preventDefault(); playing ? pause() : play(); }
      else if (event.target !== slider && event.key === "ArrowRight") { pause(); goTo(api.frame + 1); }
      else if (event.target !== slider && event.key === "ArrowLeft") { pause(); goTo(api.frame - 1); }
    });

    Object.assign(api, {
      goTo: goTo, play: play, pause: pause, setColorBy: setColorBy, setFitFrames: setFitFrames, setCards: setCards,
      pointsOf: (t) => ({ x: Array.from(frameX(clampFrame(t))), y: Array.from(frameY(clampFrame(t))) }),
      displayed: () => ({ x: Array.from(DX), y: Array.from(DY) }),
      isPlaying: () => playing,
    });
    api.ready = true;
    mark("ready");
    api.readyMs = performance.now();
    document.body.dataset.ready = "1";
    byId("status").textContent = "space: play / pause · ← →: step · hover a point for its image";
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", loadImages);
    else loadImages();
    if (live) startPolling();
  }

  // ---- live runs: a page served by ftviz serve grows with its run -------------------------
  const liveElement = byId("ftviz-live");
  const live = liveElement ? JSON.parse(liveElement.textContent) : null;
  const BADGE_COLORS = { live: "#1d7a3a", analysing: "#1f5fa8", finished: "#4b5563", stopped: "#b54708", offline: "#9ca3af" };

  /** The run's state next to the title: live, analysing, finished, stopped (or offline: no server). */
  function showBadge(state) {
    let badge = byId("live-badge");
    if (!badge) {
      badge = element("span", "live-badge");
      badge.id = "live-badge";
      Object.assign(badge.style, { color: "#fff", borderRadius: "10px", padding: "2px 10px", fontSize: "12px",
        fontWeight: "600", margin: "0 14px 0 auto", alignSelf: "center", whiteSpace: "nowrap" });
      byId("status").before(badge);
    }
    badge.textContent = state === "live" ? "● live" : state;
    badge.dataset.state = state;
    badge.style.background = BADGE_COLORS[state] || "#6b7280";
    api.live.state = state;
  }

  /** Poll the run's status; fetch and draw its data when its revision changes. */
  function startPolling() {
    let revision = live.revision;
    api.live = { state: live.state, polls: 0, updates: 0 };
    showBadge(live.state);
    async function poll() {
      let wait = 500;
      try {
        const status = await (await fetch(live.api, { cache: "no-store" })).json();
        api.live.polls++;
        if (status.revision !== revision && status.frames > 0) {
          const payload = await (await fetch(live.api + "/data", { cache: "no-store" })).json();
          if (payload.meta) await applyData(payload);
          revision = payload.revision;
          showBadge(payload.state);
        } else {
          showBadge(status.state);
        }
        // Live or assembling its final files: twice a second (a status read is a few small files);
        // stopped (may be resumed): now and then.
        if (api.live.state === "finished") return;
        if (api.live.state === "stopped") wait = 5000;
      } catch (error) {
        showBadge("offline"); // the server stopped, or the run was removed: try again later
        wait = 5000;
      }
      setTimeout(poll, wait);
    }
    setTimeout(poll, 500);
  }

  /** Newer data of a live run: frames, curves and cards change in place; frame and play state stay. */
  async function applyData(payload) {
    const next = payload.meta;
    if (next.N !== N) { location.reload(); return; } // another probe: nothing to keep
    const decoded = await decode(next, payload.points);
    const thumbnails = meta.thumbnails;
    const hadSuspicion = Boolean(meta.suspicion);
    const hadCards = cardCount();
    Object.assign(meta, next);
    if (!meta.thumbnails) meta.thumbnails = thumbnails; // the data comes without the sprite sheet
    ({ arrays, X, Y } = decoded);
    T = meta.T;
    FX = FY = null;
    if (fitFrames) makeFitted();
    SCORES = scoreScales();
    modeLabels = new Map(meta.colorModes);
    groupsCache = new Map();
    generated = Object.assign({}, generated, payload.generated || {});
    fillStepToEval();
    if (!meta.suspicion) cards = "outliers";
    else if (!hadSuspicion && !cardsChosen) cards = "suspicion";
    if (!meta.colorModes.some((m) => m[0] === colorBy)) colorBy = meta.colorBy;
    fillColorModes();
    byId("cards-by").hidden = !meta.suspicion;
    byId("cards-by").value = cards;
    byId("subtitle").textContent = meta.subtitle;
    byId("frame-slider").max = String(T - 1);
    if (cardCount() !== hadCards) buildOutlierCards();
    buildDetectors();
    buildTraining();
    if (payload.train_thumbnails !== undefined) loadTrainSheet(payload.train_thumbnails);
    byId("generated-card").hidden = meta.generatedFrames.length === 0;
    if (api.frame > T - 1) api.frame = T - 1;
    if (!anim) {
      // The frame shown stays; its points move only by the new grid's rounding.
      DX.set(frameX(api.frame));
      DY.set(frameY(api.frame));
    }
    await Plotly.react(scatter, scatterTraces(), scatterLayout());
    const lossFig = lossFigure();
    await Plotly.react(loss, lossFig.data, lossFig.layout);
    const diagnosticsFig = diagnosticsFigure();
    await Plotly.react(diagnostics, diagnosticsFig.data, diagnosticsFig.layout);
    updatePanels();
    updatePlotMarkers();
    api.live.updates++;
    document.body.dataset.frames = String(T);
  }

  main().catch((error) => {
    const box = byId("error");
    box.hidden = false;
    box.textContent = "ftviz could not draw this run: " + (error && error.message ? error.message : error);
    byId("status").textContent = "";
    console.error(error);
  });
})();
