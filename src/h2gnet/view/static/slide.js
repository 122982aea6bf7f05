// h2gnet view, slide page: the slide's Deep Zoom image (OpenSeadragon) with the tumour mask and the heatmap as
// overlays (toggle, opacity), the predicted and annotated outlines, and a scale bar in µm.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("slide-data").textContent);
  if (!data.slide) {
    return;
  }
  const PREDICTION = "rgb(0, 255, 0)";  // as in NAME.overlay.png
  const TRUTH = "rgb(0, 200, 255)";
  const element = document.getElementById("viewer");
  const viewer = OpenSeadragon({
    id: "viewer",
    prefixUrl: "/static/openseadragon/images/",
    tileSources: data.tiles + "/slide.dzi",
    drawer: "canvas",
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.5,
    gestureSettingsMouse: { clickToZoom: false },
  });
  const layers = {};  // name -> OpenSeadragon TiledImage
  const rings = {};   // name -> rings of level-0 [x0, y0, x1, y1, ...]
  const expected = 1 + (data.heatmap ? 1 : 0) + (data.mask ? 1 : 0);

  function control(name) {
    return {
      toggle: document.getElementById(name + "-toggle"),
      opacity: document.getElementById(name + "-opacity"),
    };
  }

  function syncLayer(name) {
    const c = control(name);
    if (layers[name] && c.toggle) {
      layers[name].setOpacity(c.toggle.checked ? parseFloat(c.opacity.value) : 0);
    }
  }

  function addLayers() {
    const key = encodeURIComponent(data.key);
    const mask = function () {
      if (!data.mask) { return; }
      viewer.addTiledImage({
        tileSource: data.tiles + "/mask.dzi", x: 0, y: 0, width: data.mask.width,
        success: function (event) { layers.mask = event.item; syncLayer("mask"); },
      });
    };
    if (data.heatmap) {
      viewer.addSimpleImage({
        url: "/heatmap/" + key + ".png", x: 0, y: 0, width: data.heatmap.width,
        success: function (event) { layers.heatmap = event.item; syncLayer("heatmap"); mask(); },
        error: mask,
      });
    } else {
      mask();
    }
    ["prediction", "truth"].forEach(function (name) {
      if (!data[name]) { return; }
      fetch("/outline/" + key + "/" + name + ".json")
        .then(function (response) { return response.ok ? response.json() : { rings: [] }; })
        .then(function (doc) { rings[name] = doc.rings; draw(); });
    });
  }

  // outlines: one canvas over the viewer, redrawn in level-0 coordinates whenever the view changes
  const canvas = document.createElement("canvas");
  canvas.className = "outlines";
  element.appendChild(canvas);

  function draw() {
    const slide = viewer.world.getItemAt(0);
    const ratio = window.devicePixelRatio || 1;
    const width = element.clientWidth;
    const height = element.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = width + "px";
      canvas.style.height = height + "px";
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!slide) { return; }
    const origin = slide.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const unit = slide.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));
    const scale = (unit.x - origin.x) / 1000;  // screen px per level-0 px
    [["truth", TRUTH], ["prediction", PREDICTION]].forEach(function (pair) {
      const name = pair[0];
      const c = control(name);
      if (!rings[name] || !c.toggle || !c.toggle.checked) { return; }
      ctx.setTransform(ratio * scale, 0, 0, ratio * scale, ratio * origin.x, ratio * origin.y);
      ctx.lineWidth = 2 / scale;
      ctx.strokeStyle = pair[1];
      ctx.beginPath();
      rings[name].forEach(function (ring) {
        ctx.moveTo(ring[0], ring[1]);
        for (let i = 2; i < ring.length; i += 2) { ctx.lineTo(ring[i], ring[i + 1]); }
        ctx.closePath();
      });
      ctx.stroke();
    });
    scaleBar(slide);
  }

  // scale bar: 1, 2 or 5 × 10^k µm, at most 120 screen px long
  const bar = document.getElementById("scalebar-bar");
  const label = document.getElementById("scalebar-label");

  function scaleBar(slide) {
    const zoom = slide.viewportToImageZoom(viewer.viewport.getZoom(true));  // screen px per level-0 px
    const umPerPx = data.slide.mpp / zoom;
    const most = umPerPx * 120;
    const power = Math.pow(10, Math.floor(Math.log10(most)));
    const length = [5, 2, 1].map(function (m) { return m * power; }).find(function (v) { return v <= most; });
    bar.style.width = (length / umPerPx).toFixed(1) + "px";
    label.textContent = length >= 1000 ? (length / 1000) + " mm" : (length >= 1 ? length : length.toPrecision(1)) + " µm";
    bar.dataset.um = String(length);
  }

  viewer.addOnceHandler("open", addLayers);
  viewer.addHandler("update-viewport", draw);
  viewer.addHandler("resize", draw);
  ["mask", "heatmap"].forEach(function (name) {
    const c = control(name);
    if (!c.toggle) { return; }
    c.toggle.addEventListener("change", function () { syncLayer(name); });
    c.opacity.addEventListener("input", function () { syncLayer(name); });
  });
  ["prediction", "truth"].forEach(function (name) {
    const c = control(name);
    if (c.toggle) { c.toggle.addEventListener("change", draw); }
  });

  // for tests and the curious: the viewer, and whether every image is in and drawn
  window.h2gnet = {
    viewer: viewer,
    layers: layers,
    rings: rings,
    ready: function () {
      const count = viewer.world.getItemCount();
      if (count < expected) { return false; }
      for (let i = 0; i < count; i++) {
        if (!viewer.world.getItemAt(i).getFullyLoaded()) { return false; }
      }
      return ["prediction", "truth"].every(function (name) { return !data[name] || rings[name] !== undefined; });
    },
  };
})();
