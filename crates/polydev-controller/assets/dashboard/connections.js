// Connections: connect a provider (a sign-in session whose browser VM is
// shown live in the page, its steps as they happen), disconnect, or store an
// API key instead. window.polydevConnect exposes the state to tests.
import { api, $, $$, config, elapsed, say, action } from './dashboard.js';

const cfg = config();
const S = window.polydevConnect = { sessionId: null, status: null, steps: [], viewer: null, error: null };
const panel = $('#session');
const steps = $('#steps');
const live = $('#live');
const failure = $('#failure');
const codeForm = $('#code-form');

function step(status, t0) {
  S.steps.push(status);
  const li = document.createElement('li');
  li.textContent = status.replace(/_/g, ' ');
  const t = document.createElement('span');
  t.className = 't';
  t.textContent = '+' + elapsed(Date.now() - t0);
  li.append(t);
  steps.append(li);
}

async function watch(sessionId, provider) {
  const t0 = Date.now();
  let last = null;
  for (;;) {
    let s;
    try {
      s = (await api('GET', '/api/auth/session/' + encodeURIComponent(sessionId))).session;
    } catch (e) {
      say('Reading the sign-in session failed: ' + e.message, true);
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    S.status = s.status;
    if (s.status !== last) {
      step(s.status, t0);
      last = s.status;
    }
    if (!S.viewer && (s.status === 'ready' || s.status === 'awaiting_user_auth')) {
      try {
        const v = await api('GET', '/api/auth/session/' + encodeURIComponent(sessionId) + '/novnc');
        S.viewer = v.viewerURL;
        live.src = new URL(v.viewerURL).pathname + new URL(v.viewerURL).search;
        live.hidden = false;
      } catch (e) { say('The live view could not start: ' + e.message, true); }
    }
    codeForm.hidden = !(s.status === 'awaiting_user_auth' && provider === 'gemini_cli');
    if (['completed', 'failed', 'timeout', 'cancelled'].includes(s.status)) {
      live.hidden = true;
      live.removeAttribute('src');
      $('#cancel').hidden = true;
      codeForm.hidden = true;
      if (s.status === 'completed') {
        say(provider + ' is connected.');
        const st = $('#state-' + provider);
        if (st) { st.textContent = 'connected'; st.className = 'badge ok'; }
      } else {
        S.error = s.errorMessage || s.status;
        failure.hidden = false;
        $('#failure-text').textContent = (s.errorMessage || ('the sign-in ended: ' + s.status));
        const link = $('#failure-console');
        // The browser VM's page: its failure reason and console log.
        if (s.browserVmId) { link.href = '/vms/' + encodeURIComponent(s.browserVmId); link.hidden = false; } else { link.hidden = true; }
      }
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

for (const b of $$('button[data-connect]')) {
  action(b, async () => {
    const provider = b.dataset.connect;
    steps.textContent = '';
    failure.hidden = true;
    S.steps = []; S.viewer = null; S.error = null;
    const r = await api('POST', '/api/auth/start', { userId: cfg.userId, provider });
    S.sessionId = r.sessionId;
    panel.hidden = false;
    $('#session-title').textContent = 'Connecting ' + b.dataset.name;
    $('#cancel').hidden = false;
    panel.scrollIntoView({ behavior: 'smooth' });
    watch(r.sessionId, provider);
  });
}

action($('#cancel'), async () => {
  if (S.sessionId) await api('DELETE', '/api/vm/auth/' + encodeURIComponent(S.sessionId));
});

codeForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const code = $('#code').value.trim();
  if (!code || !S.sessionId) return;
  try {
    await api('POST', '/api/auth/session/' + encodeURIComponent(S.sessionId) + '/code', { code });
    say('Code sent.');
  } catch (e) { say(e.message, true); }
});

for (const b of $$('button[data-disconnect]')) {
  action(b, async () => {
    await api('DELETE', '/api/credentials/' + encodeURIComponent(cfg.userId) + '/' + b.dataset.disconnect);
    location.reload();
  });
}

for (const f of $$('form[data-apikey]')) {
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('input', f);
    try {
      await api('PUT', '/api/credentials/' + encodeURIComponent(cfg.userId) + '/' + f.dataset.apikey, { apiKey: input.value });
      input.value = '';
      location.reload();
    } catch (e) { say(e.message, true); }
  });
}
