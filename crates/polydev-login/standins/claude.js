#!/usr/bin/env node
// STAND-IN for Anthropic's `claude` CLI login, for polydev's tests only. It is
// not Claude Code: it imitates what `claude auth login` does (SPEC §3) against
// the local OAuth stand-in named by POLYDEV_STANDIN_OAUTH (default: the real
// hosts, which have no stand-in behind them and so fail like the real CLI
// offline). Install it as `claude` in a test image.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const readline = require('readline');
const { spawn } = require('child_process');

const CLIENT_ID = '9d1c250a-e61b-44d9-88ed-5944d1962f5e';
const SCOPES = ['org:create_api_key', 'user:profile', 'user:inference'];
const STANDIN = (process.env.POLYDEV_STANDIN_OAUTH || '').replace(/\/$/, '');
const AUTHORIZE = (STANDIN || 'https://claude.com') + '/cai/oauth/authorize';
const TOKEN = (STANDIN || 'https://platform.claude.com') + '/v1/oauth/token';
const PASTE_REDIRECT = (STANDIN || 'https://platform.claude.com') + '/oauth/code/callback';
const CRED = path.join(os.homedir(), '.claude', '.credentials.json');

const b64url = (b) => b.toString('base64url');

function usage() {
  process.stderr.write('Usage: claude auth login | claude auth status\n');
  process.exit(1);
}

function authorizeUrl(redirectUri, pkce, state) {
  // Same parameter order as the real CLI.
  const q = new URLSearchParams({
    code: 'true', client_id: CLIENT_ID, response_type: 'code', redirect_uri: redirectUri,
    scope: SCOPES.join(' '), code_challenge: pkce.challenge, code_challenge_method: 'S256', state,
  });
  return `${AUTHORIZE}?${q}`;
}

function openBrowser(url) {
  const browser = process.env.BROWSER;
  if (!browser) return false;
  try {
    const child = spawn(browser, [url], { stdio: 'ignore', detached: false });
    child.on('error', () => {});
    child.unref();
    return true;
  } catch (_) { return false; }
}

function writeCredentials(tok) {
  fs.mkdirSync(path.dirname(CRED), { recursive: true, mode: 0o700 });
  const body = {
    claudeAiOauth: {
      accessToken: tok.access_token,
      refreshToken: tok.refresh_token,
      expiresAt: Date.now() + (tok.expires_in || 3600) * 1000,
      scopes: (tok.scope || SCOPES.join(' ')).split(' ').filter(Boolean),
      subscriptionType: 'pro',
    },
  };
  const tmp = CRED + '.tmp-' + process.pid;
  fs.writeFileSync(tmp, JSON.stringify(body, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, CRED);
}

function describe(err) {
  const c = err && err.cause;
  if (c && c.code === 'ENOTFOUND' && c.hostname) return `getaddrinfo ENOTFOUND ${c.hostname}`;
  if (c && c.message) return c.message;
  return err && err.message ? err.message : String(err);
}

async function exchange(code, redirectUri, verifier, state) {
  let res;
  try {
    res = await fetch(TOKEN, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'authorization_code', code, redirect_uri: redirectUri,
        client_id: CLIENT_ID, code_verifier: verifier, state }),
    });
  } catch (e) {
    throw new Error(describe(e));
  }
  const text = await res.text();
  if (!res.ok) {
    let msg = text;
    try { const j = JSON.parse(text); msg = `${j.error}: ${j.error_description || ''}`; } catch (_) {}
    throw new Error(`Token exchange failed (${res.status}): ${msg}`);
  }
  return JSON.parse(text);
}

async function login() {
  const verifier = b64url(crypto.randomBytes(32));
  const pkce = { verifier, challenge: b64url(crypto.createHash('sha256').update(verifier).digest()) };
  const state = b64url(crypto.randomBytes(32));
  let done = false;

  // Exchanges the code once; resolves to true on success. The caller exits.
  const finish = async (code, redirectUri) => {
    if (done) return false;
    done = true;
    try {
      const tok = await exchange(code, redirectUri, verifier, state);
      writeCredentials(tok);
      process.stdout.write('\nLogin successful.\n');
      return true;
    } catch (e) {
      process.stdout.write(`\nCouldn't log in: ${e.message}\n`);
      return false;
    }
  };

  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://localhost');
    if (u.pathname !== '/callback') { res.writeHead(404); res.end('not found'); return; }
    if (u.searchParams.get('state') !== state) {
      res.writeHead(400, { 'content-type': 'text/plain' }); res.end('Invalid state parameter');
      return;
    }
    const err = u.searchParams.get('error');
    if (err) {
      res.writeHead(400, { 'content-type': 'text/plain' }); res.end(`Authorization failed: ${err}`);
      process.stdout.write(`\nCouldn't log in: authorization denied (${err})\n`);
      process.exit(1);
    }
    const code = u.searchParams.get('code');
    const redirectUri = `http://localhost:${server.address().port}/callback`;
    // Answer the browser once the exchange is done, as the real CLI does.
    finish(code, redirectUri).then((ok) => {
      res.writeHead(ok ? 200 : 500, { 'content-type': 'text/html', connection: 'close' });
      res.end(ok ? '<h1>Login successful</h1><p>You can close this window.</p>' : '<h1>Login failed</h1>',
        () => process.exit(ok ? 0 : 1));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  const browserUrl = authorizeUrl(`http://localhost:${port}/callback`, pkce, state);
  const pasteUrl = authorizeUrl(PASTE_REDIRECT, pkce, state);
  const shown = process.env.CLAUDE_CODE_FULL_SIGN_IN_LINK === '1'
    ? pasteUrl
    : (STANDIN || 'https://claude.ai') + '/s/' + b64url(crypto.randomBytes(6));

  openBrowser(browserUrl);
  process.stdout.write('Opening browser to sign in…\n');
  process.stdout.write("Browser didn't open? Use the url below to sign in:\n\n");
  // Styled like the real (ink) UI: the driver must see through escape codes.
  process.stdout.write(process.stdout.isTTY ? `\x1b[2m\x1b]8;;${shown}\x1b\\${shown}\x1b]8;;\x1b\\\x1b[22m\n\n` : shown + '\n\n');
  process.stdout.write('Paste code here if prompted > ');

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  rl.on('line', (line) => {
    const input = line.trim();
    if (!input) return;
    const [code, pastedState] = input.split('#');
    if (!code || pastedState !== state) {
      process.stdout.write('\nInvalid code. Please make sure the full code was copied\nPaste code here if prompted > ');
      return;
    }
    rl.close();
    finish(code, PASTE_REDIRECT).then((ok) => process.exit(ok ? 0 : 1));
  });
}

function status() {
  try {
    const j = JSON.parse(fs.readFileSync(CRED, 'utf8'));
    if (j.claudeAiOauth && j.claudeAiOauth.accessToken) {
      process.stdout.write(JSON.stringify({ loggedIn: true, authMethod: 'claude.ai' }) + '\n');
      return process.exit(0);
    }
  } catch (_) {}
  process.stdout.write(JSON.stringify({ loggedIn: false }) + '\n');
  process.exit(1);
}

const args = process.argv.slice(2);
if (args[0] === 'auth' && args[1] === 'login') login();
else if (args[0] === 'auth' && args[1] === 'status') status();
else usage();
