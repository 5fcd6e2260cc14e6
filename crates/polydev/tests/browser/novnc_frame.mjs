// Opens a page that shows the VM's screen through noVNC and waits until its
// canvas shows something other than one flat colour.
//
//   node novnc_frame.mjs URL [vnc|viewer]
//
// `vnc`: URL is the controller's novncURL (noVNC's own vnc.html).
// `viewer`: URL is the controller's viewer page; it must end up in mode
// `novnc` or `webrtc`, and the result says which, and why it fell back.
// Last line of output: JSON {ok, mode, width, height, colours, ...}.
import { launch, finish, sleep, canvasColours } from './common.mjs';

const [url, kind = 'vnc'] = process.argv.slice(2);
const timeoutMs = Number(process.env.TIMEOUT_MS || 180000);
const browser = await launch();
const logs = [];
let result = { ok: false };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 950 } });
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  const resp = await page.goto(url);
  result.httpStatus = resp ? resp.status() : null;
  const deadline = Date.now() + timeoutMs;
  let selector = '#noVNC_container canvas';
  if (kind === 'viewer') {
    await page.waitForFunction(() => window.polydevViewer && ['novnc', 'webrtc', 'failed'].includes(window.polydevViewer.mode), null, { timeout: timeoutMs });
    const v = await page.evaluate(() => ({ ...window.polydevViewer, rfb: undefined }));
    Object.assign(result, { mode: v.mode, fallbackReason: v.fallbackReason, modeText: await page.textContent('#mode') });
    if (v.mode === 'webrtc') {
      Object.assign(result, { ok: v.frames > 0, width: v.width, height: v.height, frames: v.frames });
    } else {
      selector = '#novnc canvas';
      await page.waitForFunction(() => window.polydevViewer.connected, null, { timeout: Math.max(1000, deadline - Date.now()) });
    }
  } else {
    await page.waitForSelector('html.noVNC_connected', { timeout: timeoutMs });
  }
  result.connected = true;
  while (result.mode !== 'webrtc') {
    const c = await canvasColours(page, selector);
    Object.assign(result, c);
    if (c.canvas && c.colours > 1) { result.ok = true; break; }
    if (Date.now() > deadline) { result.error = 'the canvas stayed one flat colour'; break; }
    await sleep(1000);
  }
} catch (e) {
  result.error = String(e && e.message || e);
} finally {
  await browser.close().catch(() => {});
}
finish({ ...result, logs: logs.slice(-40) });
