// VMs, Account and Admin: buttons that call the API and reload the page.
// `data-method` + `data-path` say what a button does; forms with
// `data-path` post their fields as JSON.
import { api, $, $$, say, action } from './dashboard.js';

for (const b of $$('button[data-path]')) {
  action(b, async () => {
    const r = await api(b.dataset.method || 'POST', b.dataset.path);
    if (b.dataset.show && r) { say(b.dataset.show); }
    location.reload();
  });
}

for (const f of $$('form[data-path]')) {
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const el of f.elements) {
      if (el.name && el.value !== '') body[el.name] = el.value;
    }
    try {
      const r = await api(f.dataset.method || 'POST', f.dataset.path, body);
      if (r && r.key) {
        const box = $('#new-key');
        box.hidden = false;
        $('code', box).textContent = r.key;
        say('The new key is shown once below: copy it now.');
        f.reset();
      } else {
        location.reload();
      }
    } catch (e) { say(e.message, true); }
  });
}

// A console log is read from its end: show the last lines first.
const log = document.getElementById('console');
if (log) log.scrollTop = log.scrollHeight;
