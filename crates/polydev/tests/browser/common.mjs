// Shared by the live-view browser scripts: Debian's Chromium, headless,
// driven by playwright-core (no downloaded browser, no network beyond the
// controller on loopback).
import { chromium } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export async function launch() {
  return chromium.launch({
    executablePath: process.env.POLYDEV_TEST_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Prints the result as the last line (JSON) and exits 0 when ok.
export function finish(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
}

/// Distinct colours (up to `cap`) of a 2D canvas found by `selector`, in the page.
export async function canvasColours(page, selector, cap = 256) {
  return page.evaluate(({ selector, cap }) => {
    const c = document.querySelector(selector);
    if (!c || !c.width || !c.height) return { canvas: false };
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length && seen.size < cap; i += 4) {
      seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
    return { canvas: true, width: c.width, height: c.height, colours: seen.size };
  }, { selector, cap });
}
