// Drives the dashboard in headless Chromium, one step at a time: the test
// writes a JSON command per line on stdin, this answers a JSON line per
// command on stdout ({ok, ...}). One browser context (one set of cookies)
// for the whole run; screenshots go to SHOTS.
//
//   node dashboard.mjs BASE_URL SHOTS_DIR
import { launch, sleep } from './common.mjs';
import { createInterface } from 'node:readline';
import http from 'node:http';

const [base, shots] = process.argv.slice(2);
const browser = await launch();
const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await ctx.newPage();
const logs = [];
page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
const T = Number(process.env.STEP_TIMEOUT_MS || 900000);

// The text of an element if the page has it now (no waiting).
async function text(sel, on = page) {
  const el = await on.$(sel);
  return el ? (await el.textContent()).trim() : null;
}

async function goto(path) {
  const r = await page.goto(base + path);
  return { status: r ? r.status() : null, url: page.url() };
}

// Controls without a name a screen reader could say.
async function unlabelled() {
  return page.evaluate(() => {
    const bad = [];
    for (const el of document.querySelectorAll('button, a[href], input:not([type=hidden]), select, textarea, iframe')) {
      const id = el.id && document.querySelector(`label[for="${el.id}"]`);
      const inLabel = el.closest('label');
      const name = el.getAttribute('aria-label') || el.getAttribute('title') || (el.textContent || '').trim() || el.getAttribute('placeholder');
      if (!id && !inLabel && !name) bad.push(el.outerHTML.slice(0, 80));
    }
    return bad;
  });
}

async function liveFrame() {
  const handle = await page.waitForSelector('#live:not([hidden])', { timeout: T });
  return handle.contentFrame();
}

const ops = {
  async goto({ path }) {
    const r = await goto(path);
    return { ...r, who: await text('#who'), title: await page.title(),
      body: ((await text('main')) || '').slice(0, 2000) };
  },
  async signin({ user, password }) {
    await goto('/signin');
    await page.fill('#user', user);
    await page.fill('#password', password);
    const [resp] = await Promise.all([page.waitForNavigation(), page.click('#signin')]);
    return { status: resp ? resp.status() : null, url: page.url(),
      error: await text('#signin-error'),
      who: await text('#who') };
  },
  async signout() {
    await Promise.all([page.waitForNavigation(), page.click('header form button')]);
    return { url: page.url() };
  },
  async oidc({ provider, username }) {
    await goto('/signin');
    await Promise.all([page.waitForNavigation(), page.click(`a[data-oidc="${provider}"]`)]);
    const at = page.url();
    await page.fill('#username', username);
    await Promise.all([page.waitForNavigation(), page.click('#approve')]);
    await page.waitForLoadState('load');
    return { providerPage: at, url: page.url(), who: await text('#who'),
      error: await text('#signin-error') };
  },
  async shot({ path, name, width, height, waitFor }) {
    if (width) await page.setViewportSize({ width, height });
    const r = path ? await goto(path) : { status: null, url: page.url() };
    if (waitFor) await page.waitForFunction(waitFor, null, { timeout: 60000 }).catch(() => {});
    await sleep(300);
    await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
    const out = { ...r, unlabelled: await unlabelled() };
    if (width) await page.setViewportSize({ width: 1280, height: 860 });
    return out;
  },
  async apikey({ name }) {
    await goto('/account');
    await page.fill('#key-name', name);
    await page.click('form[data-path="/api/keys"] button');
    await page.waitForSelector('#new-key:not([hidden])', { timeout: 30000 });
    return { key: (await page.textContent('#new-key code')).trim() };
  },
  async connect({ provider }) {
    await goto('/connections');
    await page.click(`button[data-connect="${provider}"]`);
    await page.waitForFunction(() => window.polydevConnect && window.polydevConnect.sessionId, null, { timeout: 60000 });
    return { sessionId: await page.evaluate(() => window.polydevConnect.sessionId) };
  },
  async await_live() {
    await page.waitForFunction(() => window.polydevConnect.status === 'awaiting_user_auth' && window.polydevConnect.viewer, null, { timeout: T });
    const f = await liveFrame();
    await f.waitForFunction(() => window.polydevViewer && ((window.polydevViewer.mode === 'webrtc' && window.polydevViewer.frames > 0)
      || (window.polydevViewer.mode === 'novnc' && window.polydevViewer.connected)), null, { timeout: T });
    const v = await f.evaluate(() => ({ mode: window.polydevViewer.mode, frames: window.polydevViewer.frames }));
    return { ...v, steps: await page.evaluate(() => window.polydevConnect.steps) };
  },
  async type_live({ text }) {
    const f = await liveFrame();
    const mode = await f.evaluate(() => window.polydevViewer.mode);
    const target = mode === 'webrtc' ? f.locator('#video') : f.locator('#novnc canvas');
    const box = await target.boundingBox();
    // The pointer over the picture (no click: the page's field keeps its focus).
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await target.focus();
    await sleep(500);
    await page.keyboard.type(text, { delay: 80 });
    await page.keyboard.press('Enter');
    return { mode, inputSent: await f.evaluate(() => window.polydevViewer.inputSent) };
  },
  async await_connected({ provider }) {
    await page.waitForFunction(() => ['completed', 'failed', 'timeout', 'cancelled'].includes(window.polydevConnect.status), null, { timeout: T });
    const s = await page.evaluate(() => ({ ...window.polydevConnect }));
    return { ...s, state: await page.textContent(`#state-${provider}`) };
  },
  async set_api_key({ provider, key }) {
    await goto('/connections');
    await page.click(`#provider-${provider} details summary`);
    await page.fill(`#key-${provider}`, key);
    await Promise.all([page.waitForNavigation(), page.click(`form[data-apikey="${provider}"] button`)]);
    return { state: await page.textContent(`#state-${provider}`) };
  },
  async run({ provider, prompt, cancel }) {
    await goto('/runs');
    await page.selectOption('#provider', provider);
    await page.fill('#prompt', prompt);
    await page.click('#run');
    await page.waitForFunction(() => window.polydevRuns.runId, null, { timeout: 60000 });
    await page.waitForFunction(() => window.polydevRuns.text.length > 0 || window.polydevRuns.ended, null, { timeout: T });
    const early = await page.evaluate(() => ({ text: window.polydevRuns.text, ended: window.polydevRuns.ended, status: window.polydevRuns.status }));
    if (cancel) await page.click('#cancel');
    await page.waitForFunction(() => window.polydevRuns.ended, null, { timeout: T });
    const end = await page.evaluate(() => ({ ...window.polydevRuns }));
    return { runId: end.runId, early, status: end.status, text: end.text, output: await page.textContent('#output') };
  },
  async terminal() {
    await goto('/terminal');
    const f = await (await page.waitForSelector('#terminal-frame')).contentFrame();
    await f.waitForFunction(() => window.polydevTerminal && window.polydevTerminal.state === 'connected' && window.polydevTerminal.bytesIn > 0, null, { timeout: T });
    await f.click('#terminal');
    await page.keyboard.type('echo dash-$((6*7))');
    await page.keyboard.press('Enter');
    const deadline = Date.now() + 60000;
    let text = '';
    while (Date.now() < deadline) {
      text = await f.evaluate(() => window.polydevTerminal.text());
      if (/(^|\n)dash-42\s*(\n|$)/.test(text)) break;
      await sleep(250);
    }
    return { found: /(^|\n)dash-42\s*(\n|$)/.test(text), tail: text.trimEnd().split('\n').slice(-4).join('\n') };
  },
  // A page of another origin (same site: another port of this host) that
  // posts a form to the controller and opens a WebSocket to it, with this
  // browser's cookies.
  async cross_site({ formPath, wsPath }) {
    const evil = http.createServer((req, res) => {
      res.setHeader('Content-Type', 'text/html');
      res.end(`<!doctype html><title>elsewhere</title>
        <form id="f" method="post" action="${base}${formPath}"><input name="x" value="1"></form>
        <script>
          window.ws = 'pending';
          const s = new WebSocket('${base.replace('http', 'ws')}${wsPath}');
          s.onopen = () => { window.ws = 'open'; };
          s.onerror = () => { window.ws = 'refused'; };
        </script>`);
    });
    await new Promise((r) => evil.listen(0, '127.0.0.1', r));
    const other = `http://127.0.0.1:${evil.address().port}`;
    const p2 = await ctx.newPage();
    await p2.goto(other + '/');
    await p2.waitForFunction(() => window.ws !== 'pending', null, { timeout: 30000 });
    const ws = await p2.evaluate(() => window.ws);
    const [resp] = await Promise.all([p2.waitForNavigation(), p2.evaluate(() => document.getElementById('f').submit())]);
    const form = { status: resp.status(), body: (await p2.textContent('body')).slice(0, 500) };
    await p2.close();
    evil.close();
    return { origin: other, ws, form };
  },
};

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try { cmd = JSON.parse(line); } catch (e) { process.stdout.write(JSON.stringify({ ok: false, error: 'bad command' }) + '\n'); continue; }
  if (cmd.op === 'quit') break;
  try {
    const r = await ops[cmd.op](cmd);
    process.stdout.write(JSON.stringify({ ok: true, ...r }) + '\n');
  } catch (e) {
    await page.screenshot({ path: `${shots}/failed-${cmd.op}.png`, fullPage: true }).catch(() => {});
    process.stdout.write(JSON.stringify({ ok: false, op: cmd.op, error: String(e && e.message || e), url: page.url(), logs: logs.slice(-30) }) + '\n');
  }
}
await browser.close().catch(() => {});
process.exit(0);
