// The viewer page over WebRTC, end to end: it must report mode `webrtc`,
// show frames of the guest's size that change, and carry a click and typed
// text to the guest's Chromium.
//
//   node viewer_webrtc.mjs VIEWER_URL TEXT [WIDTH HEIGHT]
//
// Clicks the middle of the video, types TEXT, and waits for the picture to
// change. The caller checks in the guest that TEXT arrived.
// Last line of output: JSON {ok, mode, width, height, frames, changed, ...}.
import { launch, finish, sleep } from './common.mjs';

const [url, text, w = '1280', h = '800'] = process.argv.slice(2);
const timeoutMs = Number(process.env.TIMEOUT_MS || 180000);
const browser = await launch();
const logs = [];
const result = { ok: false };

const frameHash = (page) => page.evaluate(() => {
  const v = document.getElementById('video');
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  const x = c.getContext('2d');
  x.drawImage(v, 0, 0);
  const d = x.getImageData(0, 0, c.width, c.height).data;
  let hash = 0;
  for (let i = 0; i < d.length; i += 4) hash = (Math.imul(hash, 31) + d[i] + d[i + 1] * 7 + d[i + 2] * 13) | 0;
  return hash;
});

try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 950 } });
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.polydevViewer && ['novnc', 'webrtc', 'failed'].includes(window.polydevViewer.mode), null, { timeout: timeoutMs });
  let v = await page.evaluate(() => ({ ...window.polydevViewer, rfb: undefined }));
  Object.assign(result, { mode: v.mode, modeText: await page.textContent('#mode'), fallbackReason: v.fallbackReason, error: v.error });
  if (v.mode !== 'webrtc') throw new Error(`the viewer uses ${v.mode}, not webrtc: ${v.fallbackReason || v.error}`);
  const before = await frameHash(page);
  const framesBefore = v.frames;
  // A click in the middle of the picture, then text.
  const box = await page.locator('#video').boundingBox();
  await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
  await sleep(500);
  await page.keyboard.type(text, { delay: 60 });
  const deadline = Date.now() + 60000;
  let after = before;
  while (Date.now() < deadline) {
    await sleep(500);
    after = await frameHash(page);
    if (after !== before) break;
  }
  // Latency estimate: a key pressed here until the picture here changes
  // (viewer → data channel → XTest → guest Chromium repaints → capture →
  // VP8 → viewer). Each '.' typed changes the guest's text field.
  const keyToPixelsMs = [];
  for (let i = 0; i < 5; i++) {
    await sleep(1500);
    const h0 = await frameHash(page);
    const t0 = performance.now();
    await page.keyboard.press('Period');
    const until = Date.now() + 20000;
    while (Date.now() < until) {
      await sleep(10);
      if ((await frameHash(page)) !== h0) { keyToPixelsMs.push(Math.round(performance.now() - t0)); break; }
    }
  }
  for (let i = 0; i < 5; i++) await page.keyboard.press('Backspace');
  await sleep(2000);
  result.keyToPixelsMs = keyToPixelsMs;
  v = await page.evaluate(() => ({ ...window.polydevViewer, rfb: undefined }));
  Object.assign(result, {
    width: v.width, height: v.height, frames: v.frames, framesBefore,
    changed: after !== before, inputSent: v.inputSent,
    guestWidth: v.guestWidth, guestHeight: v.guestHeight,
  });
  result.ok = v.width === Number(w) && v.height === Number(h) && v.frames > framesBefore && result.changed && v.inputSent > text.length;
} catch (e) {
  result.error = String(e && e.message || e);
} finally {
  await browser.close().catch(() => {});
}
finish({ ...result, logs: logs.slice(-40) });
