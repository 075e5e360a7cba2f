"""The gallery page: one file, no server; its cards' data come inline, its images from gallery/ beside it."""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Test-set gallery</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:16px;color:#222}
#controls{display:flex;gap:18px;flex-wrap:wrap;align-items:center;margin-bottom:12px}
#grid{display:flex;flex-wrap:wrap;gap:8px}
.card{margin:0;width:104px;cursor:pointer;border:1px solid #ddd;border-radius:4px;padding:3px;font-size:11px}
.card:hover{border-color:#4a7bd0}.card img{display:block;width:96px;height:96px;background:#eee}
.card .TP{color:#1a7f37}.card .FP{color:#b35900}.card .missed{color:#c0392b}.card .TN{color:#666}
#detail{position:fixed;inset:0;background:rgba(0,0,0,.55);display:flex;align-items:center;justify-content:center}
#detail[hidden]{display:none}
#detail .box{background:#fff;padding:14px 18px;border-radius:6px;max-width:95vw;overflow:auto}
#detail img{width:100%;max-width:1100px;image-rendering:auto}
.captions{display:grid;grid-template-columns:repeat(var(--n),1fr);text-align:center;font-weight:600}
#close{float:right;font-size:18px}
</style></head><body>
<h1>Test-set gallery</h1>
<p>One card per (image, finding): every true finding (<span style="color:#1a7f37">true positive</span> or
<span style="color:#c0392b">missed</span> at the checkpoint's thresholds), every finding called positive that is
not there (<span style="color:#b35900">false positive</span>), else the most probable finding (true negative).
The thumbnail outlines the learned map's mask. Click a card for the maps.</p>
<div id="controls">
<label>Sort by <select id="sort">
<option value="p_full">p full, highest first</option>
<option value="faithfulness">faithfulness (p full - p drop), highest first</option>
<option value="hit">learned map's pointing: misses first</option></select></label>
<label>Finding <select id="finding"><option value="">all</option>%FINDINGS%</select></label>
<label>Case <select id="category"><option value="">all</option><option value="TP">true positive</option>
<option value="FP">false positive</option><option value="missed">missed finding</option>
<option value="TN">true negative</option></select></label>
<span id="count"></span></div>
<div id="grid"></div>
<p><button id="more" hidden>show more</button></p>
<div id="detail" hidden><div class="box"><button id="close" aria-label="close">&times;</button>
<h2 id="d-title"></h2><div class="captions" id="d-captions"></div><img id="d-img" alt="the image and its maps">
<p id="d-probs"></p></div></div>
<script id="data" type="application/json">%DATA%</script>
<script>
const cards = JSON.parse(document.getElementById("data").textContent);
const $ = id => document.getElementById(id);
const NAMES = {TP: "true positive", FP: "false positive", missed: "missed", TN: "true negative"};
const hitRank = h => h === false ? 0 : h === true ? 2 : 1;
function card(c) {
  const f = document.createElement("figure");
  f.className = "card"; f.dataset.id = c.id; f.dataset.finding = c.finding; f.dataset.category = c.category;
  const img = document.createElement("img");
  img.loading = "lazy"; img.src = "%FOLDER%/thumb/" + c.id + ".jpg"; img.alt = c.image;
  const cap = document.createElement("figcaption");
  cap.innerHTML = "<b></b><br><span class='" + c.category + "'></span><br>p " + c.p_full.toFixed(2);
  cap.querySelector("b").textContent = c.finding;
  cap.querySelector("span").textContent = NAMES[c.category];
  f.append(img, cap);
  f.addEventListener("click", () => show(c));
  return f;
}
const PAGE = 500;  // cards in the page at once: NIH's test set makes ~36,000
let shown = [], limit = PAGE;
function render() {
  const finding = $("finding").value, cat = $("category").value, key = $("sort").value;
  shown = cards.filter(c => (!finding || c.finding === finding) && (!cat || c.category === cat));
  shown.sort((a, b) => key === "hit" ? hitRank(a.hit) - hitRank(b.hit) || b.p_full - a.p_full : b[key] - a[key]);
  limit = PAGE;
  draw();
}
function draw() {
  $("grid").replaceChildren(...shown.slice(0, limit).map(card));
  $("count").textContent = shown.length + " of " + cards.length + " cards" +
    (shown.length > limit ? ", the first " + limit + " shown" : "");
  $("more").hidden = shown.length <= limit;
}
$("more").addEventListener("click", () => { limit += PAGE; draw(); });
function show(c) {
  $("d-title").textContent = c.image + ": " + c.finding + " (" + NAMES[c.category] + ")";
  const caps = ["image, boxes in green"].concat(c.maps);
  $("d-captions").style.setProperty("--n", caps.length);
  $("d-captions").replaceChildren(...caps.map(t => {
    const s = document.createElement("span"); s.textContent = t; return s;
  }));
  $("d-img").src = "%FOLDER%/detail/" + c.id + ".jpg";
  const hit = c.hit === null ? "no box" : c.hit ? "its maximum inside a box" : "its maximum outside the boxes";
  $("d-probs").textContent = "p full " + c.p_full.toFixed(3) + ", crop " + c.p_crop.toFixed(3) + ", drop " +
    c.p_drop.toFixed(3) + " (the learned map's mask kept alone, or dropped); learned map: " + hit +
    "; labels: " + (c.labels.join(", ") || "none");
  $("detail").hidden = false;
}
$("close").addEventListener("click", () => { $("detail").hidden = true; });
$("detail").addEventListener("click", e => { if (e.target.id === "detail") $("detail").hidden = true; });
for (const id of ["sort", "finding", "category"]) $(id).addEventListener("change", render);
render();
</script></body></html>
"""
