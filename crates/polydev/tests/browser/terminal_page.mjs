// Opens the terminal page of a user's CLI VM, types a command into the
// xterm.js terminal and waits for its output in the terminal's buffer.
//
//   node terminal_page.mjs URL
//
// Last line of output: JSON {ok, state, connects, bytesIn, found, tail, ...}.
import { launch, finish, sleep } from './common.mjs';

const [url] = process.argv.slice(2);
const timeoutMs = Number(process.env.TIMEOUT_MS || 180000);
const browser = await launch();
const logs = [];
let result = { ok: false };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  const resp = await page.goto(url);
  result.httpStatus = resp ? resp.status() : null;
  result.labels = await page.evaluate(() =>
    [...document.querySelectorAll('button, [role]')].map((e) => e.getAttribute('aria-label') || e.textContent.trim()));
  await page.waitForFunction(() => window.polydevTerminal && window.polydevTerminal.state === 'connected'
    && window.polydevTerminal.bytesIn > 0, null, { timeout: timeoutMs });
  await page.click('#terminal');
  await page.keyboard.type('echo page-$((2+3))');
  await page.keyboard.press('Enter');
  const deadline = Date.now() + 30000;
  for (;;) {
    const text = await page.evaluate(() => window.polydevTerminal.text());
    // The typed line shows `page-$((2+3))`; only the shell's answer is `page-5`.
    result.found = /(^|\n)page-5\s*(\n|$)/.test(text);
    result.tail = text.trimEnd().split('\n').slice(-6).join('\n');
    if (result.found) break;
    if (Date.now() > deadline) { result.error = 'no page-5 in the terminal'; break; }
    await sleep(250);
  }
  const s = await page.evaluate(() => ({ ...window.polydevTerminal, term: undefined, text: undefined }));
  Object.assign(result, { state: s.state, connects: s.connects, bytesIn: s.bytesIn, status: s.status, error: result.error || s.error,
    cols: await page.evaluate(() => window.polydevTerminal.term.cols) });
  result.ok = !!result.found && s.state === 'connected';
} catch (e) {
  result.error = String(e && e.message || e);
} finally {
  await browser.close().catch(() => {});
}
finish({ ...result, logs: logs.slice(-40) });
