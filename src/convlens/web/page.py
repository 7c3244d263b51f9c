"""The explorer page: upload (drag and drop), choose image, method, layer, unit and target, see the result."""

from __future__ import annotations

import html
import json

from convlens.report.assets import CSS
from convlens.report.pngs import legend

PAGE_CSS = """
.app { display: grid; grid-template-columns: 330px 1fr; gap: 1.5em; align-items: start; }
.panel { border: 1px solid var(--line); border-radius: 8px; padding: 1em; background: var(--soft); }
.panel label { display: block; margin: .6em 0 .2em; font-weight: 600; font-size: .9em; }
.panel select, .panel input[type=text], .panel input[type=number] { width: 100%; font: inherit; padding: .3em; }
#drop { border: 2px dashed #8c959f; border-radius: 8px; padding: 1.2em; text-align: center; background: #fff;
  cursor: pointer; }
#drop.over { border-color: var(--accent); background: #ddf4ff; }
#images { display: flex; flex-wrap: wrap; gap: 6px; margin-top: .6em; }
#images img { width: 64px; height: 64px; object-fit: cover; border: 2px solid transparent; cursor: pointer; }
#images img.chosen { border-color: var(--accent); }
button { font: inherit; padding: .4em 1.2em; margin-top: 1em; background: var(--accent); color: #fff;
  border: 0; border-radius: 6px; cursor: pointer; }
#status { margin: .5em 0; color: var(--muted); min-height: 1.5em; }
#status.error { color: #cf222e; }
#api-link { word-break: break-all; }
#result-figure { max-width: 100%; border: 1px solid var(--line); image-rendering: pixelated; }
#result-figure[src=""] { display: none; }
"""

PAGE_JS = """
const card = JSON.parse(document.getElementById('card').textContent);
let chosen = null;
const $ = (id) => document.getElementById(id);
function status(text, error) { $('status').textContent = text; $('status').className = error ? 'error' : ''; }
function fillControls() {
  for (const [name, title] of Object.entries(card.methods)) $('method').add(new Option(title, name));
  $('method').value = 'gradcam';  // works on any CNN (CAM needs a global-average-pooling head)
  $('layer').add(new Option('(the method\\'s default)', ''));
  for (const layer of card.layers) {
    $('layer').add(new Option(layer.name + ' (' + layer.shape.join('x') + ')', layer.name));
  }
  for (const name of card.classes) {
    const option = document.createElement('option'); option.value = name; $('classes').appendChild(option);
  }
}
async function loadImages() {
  const images = await (await fetch('/api/images')).json();
  $('images').innerHTML = '';
  for (const image of images) {
    const img = document.createElement('img');
    img.src = '/api/images/' + image.id; img.alt = image.name; img.title = image.name; img.dataset.id = image.id;
    img.onclick = () => choose(image.id);
    $('images').appendChild(img);
  }
  if (chosen) choose(chosen, true);
}
async function showPredictions(id) {
  $('predictions').textContent = '';
  const response = await fetch('/api/images/' + id + '/predictions');
  if (!response.ok || chosen !== id) return;
  const top = await response.json();
  $('predictions').textContent = 'top-3: ' + top.map(
    (p) => p.name + ' ' + (100 * p.probability).toFixed(1) + '%').join(', ');
}
function choose(id, quiet) {
  if (chosen !== id || !$('predictions').textContent) showPredictions(id);
  chosen = id;
  document.querySelectorAll('#images img').forEach((img) => img.classList.toggle('chosen', img.dataset.id === id));
  if (!quiet) run();
}
async function upload(file) {
  status('uploading ' + file.name + ' ...');
  const form = new FormData(); form.append('file', file);
  const response = await fetch('/api/images', {method: 'POST', body: form});
  const body = await response.json();
  if (!response.ok) { status(response.status + ': ' + body.detail, true); return; }
  chosen = body.id; await loadImages(); run();
}
let polling = null;
async function poll(started) {
  const jobs = await (await fetch('/api/progress')).json();
  const text = jobs.map((j) => j.description + (j.total ? ' ' + j.done + '/' + j.total : '')).join('; ');
  status('computing ... ' + ((Date.now() - started) / 1000).toFixed(1) + ' s' + (text ? ' (' + text + ')' : ''));
}
async function run() {
  if (!chosen) { status('upload or choose an image first', true); return; }
  const request = {image: chosen, method: $('method').value, layer: $('layer').value || null,
                   unit: $('unit').value === '' ? null : Number($('unit').value), target: $('target').value || null,
                   arrays: []};
  const started = Date.now();
  polling = setInterval(() => poll(started), 500);
  try {
    const response = await fetch('/api/explain', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                  body: JSON.stringify(request)});
    const body = await response.json();
    if (!response.ok) { status(response.status + ': ' + body.detail, true); return; }
    $('result-figure').src = body.figure;
    $('result-figure').dataset.key = body.key;
    $('caption').textContent = body.caption;
    $('legend').hidden = body.kind !== 'cam';
    // maps of the input are enlarged to a readable size; figures keep their own
    $('result-figure').style.width = ['cam', 'projection'].includes(body.kind) ? '336px' : 'auto';
    $('summary').textContent = JSON.stringify(body.summary, null, 1);
    $('api-link').textContent = 'POST /api/explain ' + JSON.stringify({...request, arrays: undefined});
    status('done in ' + ((Date.now() - started) / 1000).toFixed(1) + ' s' + (body.cached ? ' (cached)' : ''));
  } finally { clearInterval(polling); }
}
const drop = $('drop');
drop.addEventListener('click', () => $('file').click());
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]); });
$('file').addEventListener('change', () => { if ($('file').files.length) upload($('file').files[0]); });
$('run').addEventListener('click', run);
fillControls(); loadImages();
"""


def explorer_page(card: dict) -> str:
    e = html.escape
    data = json.dumps(card).replace("</", "<\\/")
    limit = card["max_upload_bytes"] / 2**20
    return f"""<!doctype html><html lang='en'><head><meta charset='utf-8'>
<meta name='viewport' content='width=device-width, initial-scale=1'><title>convlens serve: {e(card['spec'])}</title>
<link rel='icon' href='data:,'><style>{CSS}{PAGE_CSS}</style></head><body>
<header class='top'><span class='brand'>convlens serve</span><span>{e(card['spec'])}, input
{card['input_size'][0]}x{card['input_size'][1]}, {len(card['classes'])} classes</span>
<a href='/report/'>report of these images</a><a href='/docs'>API</a></header>
<main><div class='app'><div class='panel'>
<div id='drop' tabindex='0'>Drop an image here, or click to choose one<br><small>up to {limit:.0f} MB, PNG, JPEG,
GIF, BMP, TIFF, WebP</small></div><input type='file' id='file' accept='image/*' hidden>
<div id='images' aria-label='images'></div>
<label for='method'>Method</label><select id='method'></select>
<label for='layer'>Layer</label><select id='layer'></select>
<label for='unit'>Unit (for projections)</label><input type='number' id='unit' min='0' placeholder='channel index'>
<label for='target'>Target class</label><input type='text' id='target' list='classes'
placeholder='predicted'><datalist id='classes'></datalist>
<button id='run'>Explain</button></div>
<div><div id='status' role='status'>Upload or choose an image.</div><img id='result-figure' src='' alt='result'>
<p id='caption'></p><p id='predictions'></p>
<div id='legend' hidden>{legend("jet", "0", "1", "no evidence to strongest evidence")}</div>
<p><code id='api-link'></code></p><details><summary>summary()</summary><pre id='summary'></pre></details>
</div></div></main><script type='application/json' id='card'>{data}</script><script>{PAGE_JS}</script>
</body></html>"""
