// The try-on page's script. It speaks only the public API: the options form comes from
// GET /v1/models, a try-on is a job (POST /v1/jobs) followed through its event stream
// (GET /v1/jobs/{id}/events, read with fetch so that the API key can travel in a header),
// and the mask preview is POST /v1/masks where the server has it.
'use strict';

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = 'virtualfit-api-key';
const FINAL = ['succeeded', 'failed', 'cancelled', 'expired'];
const STAGES = {
  queued: 'Queued', encode: 'Encoding the inputs', sampling: 'Sampling',
  decode: 'Decoding', encode_output: 'Encoding the image',
};
const chosen = { person: null, cloth: null, model: null };

function authHeaders() {
  const key = $('api-key').value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The server's own words for a refused request: its JSON `message`.
async function messageOf(response) {
  try {
    const body = await response.json();
    return body.message || body.error || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function showError(message) {
  $('error').textContent = message || '';
  $('error').hidden = !message;
}

function showImage(img, blob) {
  if (img.src.startsWith('blob:')) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
}

function showProgress(p, label) {
  if (!p) return;
  $('progress').max = Math.max(p.total, 1);
  $('progress').value = p.done;
  $('stage').textContent = `${label || STAGES[p.stage] || p.stage}: ${p.done} of ${p.total}`;
}

function setPhoto(which, blob) {
  chosen[which] = blob;
  showImage($(`${which}-img`), blob);
}

// One form field per option the served model declares.
function optionField(option) {
  const label = document.createElement('label');
  label.append(`${option.name} `);
  let input;
  if (option.choices) {
    input = document.createElement('select');
    for (const c of option.choices) input.add(new Option(c, c, false, c === option.default));
  } else {
    input = document.createElement('input');
    input.type = 'number';
    input.step = option.type === 'number' ? 'any' : '1';
    if (option.minimum != null) input.min = option.minimum;
    if (option.maximum != null) input.max = option.maximum;
    if (option.default != null) input.value = option.default;
    else input.placeholder = 'random';
  }
  input.id = `option-${option.name}`;
  // Only changed fields are sent, so the server's defaults (a preset's among them) apply.
  input.dataset.initial = input.value;
  const help = document.createElement('small');
  help.textContent = `${option.help} (${option.values})`;
  label.append(input, help);
  return label;
}

async function loadModel() {
  const r = await fetch('/v1/models');
  if (!r.ok) return showError(await messageOf(r));
  const model = (await r.json()).models[0];
  chosen.model = model;
  $('model-line').textContent = `Model ${model.name} on ${model.device}`;
  for (const option of model.options) $('options').append(optionField(option));
  if (!model.options.length) $('options').append('This model has no options.');
}

async function fetchBlob(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(await messageOf(r));
  return r.blob();
}

// The sample pairs, when the server has its sample folder; else upload only.
async function loadSamples() {
  const r = await fetch('/samples');
  if (!r.ok) return;
  const { notice, pairs } = await r.json();
  $('notice').textContent = notice;
  pairs.forEach((pair, i) => {
    const label = document.createElement('label');
    const radio = document.createElement('input');
    radio.type = 'radio';
    radio.name = 'pair';
    radio.id = `pair-${i}`;
    radio.setAttribute('aria-label', `Sample pair ${i + 1}`);
    radio.addEventListener('change', () => pickSample(pair));
    label.append(radio);
    for (const kind of ['person', 'cloth']) {
      const img = document.createElement('img');
      img.src = `/samples/${kind}/${pair[kind]}`;
      img.alt = '';
      label.append(img);
    }
    $('samples').append(label);
  });
  $('samples-box').hidden = false;
}

async function pickSample(pair) {
  try {
    const [person, cloth] = await Promise.all(
      ['person', 'cloth'].map((kind) => fetchBlob(`/samples/${kind}/${pair[kind]}`)));
    setPhoto('person', person);
    setPhoto('cloth', cloth);
  } catch (e) {
    showError(e.message);
  }
}

// The mask the model will repaint, for models with a garment category; hidden where the
// server has no /v1/masks (404).
async function previewMask() {
  const panel = $('mask-panel');
  const category = $('option-category');
  if (!category) { panel.hidden = true; return; }
  const form = new FormData();
  form.append('person_image', chosen.person, 'person');
  form.append('category', category.value);
  const r = await fetch('/v1/masks', { method: 'POST', headers: authHeaders(), body: form });
  if (r.status === 404) { panel.hidden = true; return; }
  if (!r.ok) { showError(await messageOf(r)); return; }
  showImage($('mask-img'), await r.blob());
  panel.hidden = false;
}

// Server-Sent Events from a fetch body: yields {event, data} per event, skipping comments
// (the heartbeats).
async function* serverEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: data.join('\n') };
    }
  }
}

// Follows a job to its final status: its event stream, then polling if the stream ends early
// (idle, a drain, a proxy that cuts it).
async function follow(job) {
  let status = job;
  showProgress(job.progress);
  try {
    const r = await fetch(`/v1/jobs/${job.id}/events`, { headers: authHeaders() });
    if (r.ok) {
      for await (const { event, data } of serverEvents(r.body)) {
        if (event === 'status') {
          status = JSON.parse(data);
          showProgress(status.progress);
          if (FINAL.includes(status.status)) return status;
        } else if (event === 'progress') {
          showProgress(JSON.parse(data));
        }
      }
    }
  } catch {
    // Polled below.
  }
  for (;;) {
    const r = await fetch(`/v1/jobs/${job.id}`, { headers: authHeaders() });
    if (!r.ok) throw new Error(await messageOf(r));
    status = await r.json();
    showProgress(status.progress);
    if (FINAL.includes(status.status)) return status;
    await new Promise((done) => setTimeout(done, 1000));
  }
}

async function tryOn(event) {
  event.preventDefault();
  showError('');
  if (!chosen.person || !chosen.cloth) {
    return showError('Pick a sample pair, or upload a person photo and a garment photo.');
  }
  const form = new FormData();
  form.append('person_image', chosen.person, 'person');
  form.append('cloth_image', chosen.cloth, 'cloth');
  form.append('priority', 'interactive');
  for (const option of chosen.model ? chosen.model.options : []) {
    const input = $(`option-${option.name}`);
    const value = input.value.trim();
    if (value !== '' && value !== input.dataset.initial) form.append(option.name, value);
  }
  $('submit').disabled = true;
  $('download').hidden = true;
  $('result-img').removeAttribute('src');
  try {
    previewMask().catch((e) => showError(e.message));
    const r = await fetch('/v1/jobs', { method: 'POST', headers: authHeaders(), body: form });
    if (!r.ok) throw new Error(await messageOf(r));
    const job = await follow(await r.json());
    if (job.status !== 'succeeded') {
      throw new Error(job.error ? job.error.message : `The job ended ${job.status}.`);
    }
    const image = await fetch(job.result_url, { headers: authHeaders() });
    if (!image.ok) throw new Error(await messageOf(image));
    const blob = await image.blob();
    showImage($('result-img'), blob);
    showProgress(job.progress, 'Done');
    $('download').href = $('result-img').src;
    $('download').download = blob.type === 'image/png' ? 'tryon.png' : 'tryon.jpg';
    $('download').hidden = false;
  } catch (e) {
    showError(e.message);
  } finally {
    $('submit').disabled = false;
  }
}

function start() {
  $('api-key').value = sessionStorage.getItem(KEY_STORAGE) || '';
  $('api-key').addEventListener('input', () => sessionStorage.setItem(KEY_STORAGE, $('api-key').value));
  for (const which of ['person', 'cloth']) {
    $(`${which}-file`).addEventListener('change', (e) => {
      const file = e.target.files[0];
      if (!file) return;
      for (const radio of document.querySelectorAll('input[name=pair]')) radio.checked = false;
      setPhoto(which, file);
    });
  }
  $('tryon').addEventListener('submit', tryOn);
  loadModel().catch((e) => showError(e.message));
  loadSamples().catch(() => {});
}

start();
