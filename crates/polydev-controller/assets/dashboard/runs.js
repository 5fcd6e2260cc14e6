// Runs: a prompt runs in the user's CLI VM; its events stream in over SSE
// as the CLI prints them. window.polydevRuns exposes the state to tests.
import { api, $, $$, config, say, action } from './dashboard.js';

const cfg = config();
const S = window.polydevRuns = { runId: null, status: null, text: '', events: 0, ended: false };
const out = $('#output');
const statusEl = $('#run-status');
const usageEl = $('#run-usage');
let source = null;

function line(cls, text) {
  const span = document.createElement('span');
  if (cls) span.className = cls;
  span.textContent = text;
  out.append(span);
  out.scrollTop = out.scrollHeight;
}

function summary(d) {
  if (!d) return '';
  if (d.command) return Array.isArray(d.command) ? d.command.join(' ') : String(d.command);
  if (d.name) return d.name + (d.input ? ' ' + JSON.stringify(d.input).slice(0, 300) : '');
  if (d.output) return String(d.output).slice(0, 2000);
  if (d.message) return d.message;
  return '';
}

async function finish(runId) {
  const r = await api('GET', '/api/runs/' + encodeURIComponent(runId));
  S.status = r.status;
  S.ended = true;
  statusEl.textContent = r.status + (r.exitCode !== null && r.exitCode !== undefined ? ' (exit ' + r.exitCode + ')' : '');
  const u = r.usage || {};
  usageEl.textContent = (u.inputTokens || 0) + ' in / ' + (u.outputTokens || 0) + ' out tokens'
    + (u.costUsd !== null && u.costUsd !== undefined ? ', $' + Number(u.costUsd).toFixed(4) : '');
  if (r.conversationId) { $('#conversation').value = r.conversationId; }
  if (r.error) line('err', '\n' + r.error + '\n');
  $('#cancel').disabled = true;
}

function stream(runId) {
  if (source) source.close();
  S.runId = runId; S.text = ''; S.events = 0; S.ended = false;
  out.textContent = '';
  statusEl.textContent = 'queued';
  usageEl.textContent = '';
  $('#cancel').disabled = false;
  source = new EventSource('/api/runs/' + encodeURIComponent(runId) + '/events');
  const on = (kind, fn) => source.addEventListener(kind, (ev) => {
    S.events += 1;
    let d = null;
    try { d = JSON.parse(ev.data); } catch (_) { /* keep null */ }
    fn(d);
  });
  on('status', (d) => { if (d && d.status) { S.status = d.status; statusEl.textContent = d.status; } });
  on('text', (d) => { const t = (d && d.text) || ''; S.text += t; line('', t); });
  on('tool_use', (d) => line('tool', '\n$ ' + summary(d) + '\n'));
  on('tool_result', (d) => line('result', summary(d) + '\n'));
  on('error', (d) => { if (d) line('err', '\n' + (summary(d) || JSON.stringify(d)) + '\n'); });
  on('result', () => {});
  source.addEventListener('error', (ev) => {
    // A run's own `error` events carry data; a connection's do not. The
    // stream ends when the run has ended (the server closes it).
    if (ev.data !== undefined) return;
    if (source.readyState === EventSource.CLOSED || S.status) {
      source.close();
      finish(runId).catch((e) => say(e.message, true));
    }
  });
}

$('#prompt-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const body = { userId: cfg.userId, provider: $('#provider').value, prompt: $('#prompt').value };
  const conv = $('#continue').checked ? $('#conversation').value.trim() : '';
  if (conv) body.conversationId = conv;
  const b = $('#run');
  b.disabled = true;
  try {
    const r = await api('POST', '/api/runs', body);
    say('');
    stream(r.runId);
  } catch (e) { say(e.message, true); } finally { b.disabled = false; }
});

action($('#cancel'), async () => {
  if (S.runId) await api('POST', '/api/runs/' + encodeURIComponent(S.runId) + '/cancel');
});

for (const a of $$('a[data-run]')) {
  a.addEventListener('click', (ev) => { ev.preventDefault(); stream(a.dataset.run); });
}
if (cfg.openRun) stream(cfg.openRun);
