// polydev dashboard: what every page shares. The pages call the same JSON
// API as any client, with the session cookie; the browser adds Origin and
// Sec-Fetch-Site, which the controller checks on every changing request.
export async function api(method, path, body) {
  const init = { method, headers: {}, cache: 'no-store', credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let j = null;
  try { j = await r.json(); } catch (_) { /* no JSON body */ }
  if (!r.ok) {
    const e = new Error(j && j.error ? j.error.message : 'HTTP ' + r.status);
    e.code = j && j.error ? j.error.code : String(r.status);
    e.status = r.status;
    throw e;
  }
  return j;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
export const config = () => JSON.parse(document.getElementById('page-config').textContent);

export function when(ms) {
  if (!ms) return '—';
  return new Date(ms).toLocaleString();
}

export function elapsed(ms) {
  const s = Math.max(0, ms) / 1000;
  return s < 60 ? s.toFixed(1) + ' s' : Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
}

// Shows a message in the page's live region (screen readers hear it too).
export function say(text, bad = false) {
  const el = document.getElementById('flash');
  if (!el) return;
  el.textContent = text;
  el.className = bad ? 'notice bad' : 'notice';
  el.hidden = !text;
}

// Buttons with data-confirm ask first; buttons busy while their action runs.
export function action(button, fn) {
  button.addEventListener('click', async (ev) => {
    ev.preventDefault();
    const q = button.dataset.confirm;
    if (q && !window.confirm(q)) return;
    button.disabled = true;
    try { await fn(ev); } catch (e) { say(e.message, true); } finally { button.disabled = false; }
  });
}
