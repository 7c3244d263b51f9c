"""The report's one stylesheet and one script, written to ``assets/`` (no CDN: the folder works offline)."""

from __future__ import annotations

import html

CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d0d7de; --accent:#0969da; --soft:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; }
header.top { background: #24292f; color: #fff; padding: .6em 1.5em; display: flex; gap: 1.5em; align-items: center;
  flex-wrap: wrap; }
header.top a { color: #fff; text-decoration: none; }
header.top .brand { font-weight: 600; }
header.top .crumbs a { opacity: .85; } header.top .crumbs a:hover { opacity: 1; text-decoration: underline; }
main { max-width: 1500px; margin: 0 auto; padding: 1em 1.5em 3em; }
h1 { font-size: 1.6em; margin: .4em 0; } h2 { font-size: 1.25em; border-bottom: 1px solid var(--line);
  padding-bottom: .2em; margin-top: 1.8em; }
a { color: var(--accent); }
p.lead { color: var(--muted); max-width: 70em; }
.note { background: #fff8c5; border: 1px solid #d4a72c66; padding: .5em .8em; border-radius: 6px; max-width: 70em; }
table { border-collapse: collapse; font-size: .92em; }
th, td { border-bottom: 1px solid var(--line); padding: .25em .7em; text-align: left; vertical-align: top; }
th { background: var(--soft); position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.shown td:first-child { font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px; background: #fff; width: 214px; }
.card img { display: block; width: 196px; height: auto; image-rendering: pixelated; }
.card .caption { font-size: .86em; margin-top: .3em; overflow-wrap: anywhere; }
.card.wide { width: auto; }
.preds { list-style: none; padding: 0; margin: .3em 0 0; font-size: .86em; }
.preds li { display: grid; grid-template-columns: 1fr 3.6em; gap: .4em; align-items: center; }
.preds .name { overflow-wrap: anywhere; }
.preds .p { text-align: right; font-variant-numeric: tabular-nums; }
.preds .meter { grid-column: 1 / 3; height: 4px; background: #e7ecf0; border-radius: 2px; }
.preds .meter span { display: block; height: 4px; background: var(--accent); border-radius: 2px; }
.figure { overflow-x: auto; margin: .6em 0; }
.figure img { max-width: none; border: 1px solid var(--line); cursor: zoom-in; }
.figure.wide::before { content: "wider than the page: scroll sideways, or click it to open it full size";
  display: block; font-size: .8em; color: var(--muted); margin-bottom: .2em; }
.legend { display: flex; align-items: center; gap: .5em; font-size: .86em; margin: .4em 0 .8em; }
.legend .bar { display: inline-block; width: 220px; height: 12px; border: 1px solid var(--line); }
.legend em { color: var(--muted); }
.tiles { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.tile { text-align: center; font-size: .78em; }
.tile img { display: block; width: 72px; height: 72px; image-rendering: pixelated; border: 1px solid var(--line); }
.maprow { display: flex; gap: 12px; align-items: center; margin: 6px 0; }
.maprow > a img { width: 72px; height: 72px; image-rendering: pixelated; }
.maprow .label { width: 11em; font-size: .85em; overflow-wrap: anywhere; }
.pair { display: inline-flex; gap: 4px; border: 1px solid var(--line); border-radius: 6px; padding: 4px;
  margin: 0 6px 8px 0; flex-direction: column; font-size: .78em; }
.pair .imgs { display: flex; gap: 4px; }
.pair img { width: 96px; height: 96px; image-rendering: pixelated; }
.pair.large img { width: 150px; height: 150px; } .pair.large { font-size: .82em; max-width: 312px; }
.bar-cell { width: 160px; } .bar-cell span { display: block; height: 8px; background: #3b6ea5; }
nav.units { display: flex; gap: 1em; align-items: center; margin: .4em 0 1em; flex-wrap: wrap; }
nav.units a, nav.units span.off { border: 1px solid var(--line); border-radius: 6px; padding: .2em .7em; }
nav.units span.off { color: var(--muted); }
kbd { border: 1px solid var(--line); border-bottom-width: 2px; border-radius: 4px; padding: 0 .35em;
  font-size: .85em; background: var(--soft); }
input[type=search] { font: inherit; padding: .3em .6em; width: 22em; border: 1px solid var(--line);
  border-radius: 6px; }
details summary { cursor: pointer; color: var(--accent); }
code { background: var(--soft); padding: 0 .3em; border-radius: 4px; font-size: .92em; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1.2em; margin: .6em 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
.scroll { max-height: 32em; overflow-y: auto; border: 1px solid var(--line); display: inline-block; }
#lightbox { position: fixed; inset: 0; background: #000c; display: none; align-items: center;
  justify-content: center; z-index: 10; cursor: zoom-out; }
#lightbox.open { display: flex; } #lightbox img { max-width: 96vw; max-height: 94vh; background: #fff; }
"""

JS = """
(function () {
  // Keyboard: left/right arrows (or j/k) move between units, up (or u) goes to the unit's layer.
  document.addEventListener('keydown', function (event) {
    if (event.target.closest('input, textarea, select') || event.altKey || event.ctrlKey || event.metaKey) return;
    var keys = {ArrowLeft: 'prev', k: 'prev', ArrowRight: 'next', j: 'next', ArrowUp: 'up', u: 'up'};
    var link = keys[event.key] && document.querySelector('a[data-nav="' + keys[event.key] + '"]');
    if (link) { event.preventDefault(); window.location.href = link.href; }
    if (event.key === 'Escape') { closeBox(); }
  });
  // Layer search: hides rows and links whose data-layer does not contain the text.
  var search = document.getElementById('layer-search');
  if (search) {
    search.addEventListener('input', function () {
      var text = search.value.trim().toLowerCase();
      document.querySelectorAll('[data-layer]').forEach(function (row) {
        row.style.display = row.getAttribute('data-layer').toLowerCase().indexOf(text) >= 0 ? '' : 'none';
      });
    });
  }
  // Figures wider than the column shrink to fit, down to 3/4 of their size (their text stays readable); wider
  // ones scroll sideways and say so.
  function fit(img) {
    var box = img.closest('.figure');
    if (!box || !img.naturalWidth) return;
    var room = box.clientWidth - 2;
    var width = Math.min(img.naturalWidth, Math.max(room, Math.round(0.75 * img.naturalWidth)));
    img.style.width = width + 'px';
    img.style.height = 'auto';
    box.classList.toggle('wide', width > room);
  }
  var figures = document.querySelectorAll('.figure img');
  figures.forEach(function (img) {
    if (img.complete) { fit(img); } else { img.addEventListener('load', function () { fit(img); }); }
  });
  window.addEventListener('resize', function () { figures.forEach(fit); });
  // Figures open full size on a click (the link still works without script).
  var box = document.createElement('div');
  box.id = 'lightbox';
  box.innerHTML = '<img alt="full size">';
  document.body.appendChild(box);
  function closeBox() { box.classList.remove('open'); }
  box.addEventListener('click', closeBox);
  document.querySelectorAll('a.zoom').forEach(function (link) {
    link.addEventListener('click', function (event) {
      event.preventDefault();
      box.querySelector('img').src = link.getAttribute('href');
      box.classList.add('open');
    });
  });
})();
"""


def page(title: str, root: str, body: str, crumbs: list[tuple[str, str]] | None = None) -> str:
    """A whole page: ``root`` is the relative path back to the report's folder (``""``, ``"../"``...)."""
    trail = "".join(f" / <a href='{html.escape(href)}'>{html.escape(text)}</a>" for text, href in crumbs or [])
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)} · convlens report</title><link rel='icon' href='data:,'>"
        f"<link rel='stylesheet' href='{root}assets/report.css'></head><body>"
        f"<header class='top'><a class='brand' href='{root}index.html'>convlens report</a>"
        f"<span class='crumbs'><a href='{root}index.html'>model</a>{trail}</span></header>"
        f"<main>{body}</main><script src='{root}assets/report.js'></script></body></html>"
    )
