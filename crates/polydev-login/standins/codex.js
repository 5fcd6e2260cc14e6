#!/usr/bin/env node
// STAND-IN for OpenAI's `codex` CLI login, for polydev's tests only. It is not
// Codex: it imitates `codex login` / `codex login status` (SPEC §3) against the
// local OAuth stand-in named by POLYDEV_STANDIN_OAUTH (default: the real host,
// unreachable offline, so it fails like the real CLI). Install it as `codex`
// in a test image.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { spawn } = require('child_process');

const CLIENT_ID = 'app_EMoamEEZ73f0CkXaXp7hrann';
const PORT = 1455;
const REDIRECT_URI = `http://127.0.0.1:${PORT}/auth/callback`;
const ISSUER = (process.env.POLYDEV_STANDIN_OAUTH || 'https://auth.openai.com').replace(/\/$/, '');
const AUTH = path.join(process.env.CODEX_HOME || path.join(os.homedir(), '.codex'), 'auth.json');

const b64url = (b) => b.toString('base64url');

function authorizeUrl(challenge, state) {
  const q = new URLSearchParams({
    response_type: 'code', client_id: CLIENT_ID, redirect_uri: REDIRECT_URI,
    scope: 'openid profile email offline_access', code_challenge: challenge,
    code_challenge_method: 'S256', id_token_add_organizations: 'true',
    codex_cli_simplified_flow: 'true', state, originator: 'codex_cli_rs',
  });
  return `${ISSUER}/oauth/authorize?${q}`;
}

function claims(jwt) {
  try { return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()); } catch (_) { return {}; }
}

function writeAuth(tok) {
  fs.mkdirSync(path.dirname(AUTH), { recursive: true, mode: 0o700 });
  const c = claims(tok.id_token || '');
  const acct = (c['https://api.openai.com/auth'] || {}).chatgpt_account_id || '';
  const body = {
    OPENAI_API_KEY: null,
    auth_mode: 'chatgpt',
    tokens: { id_token: tok.id_token, access_token: tok.access_token, refresh_token: tok.refresh_token, account_id: acct },
    last_refresh: new Date().toISOString(),
  };
  const tmp = AUTH + '.tmp-' + process.pid;
  fs.writeFileSync(tmp, JSON.stringify(body, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, AUTH);
}

async function exchange(code, verifier) {
  const url = `${ISSUER}/oauth/token`;
  let res;
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI,
        client_id: CLIENT_ID, code_verifier: verifier }).toString(),
    });
  } catch (_) {
    throw new Error(`Token exchange error: error sending request for url (${url})`);
  }
  const text = await res.text();
  if (!res.ok) throw new Error(`Token exchange error: token endpoint returned status ${res.status}: ${text}`);
  return JSON.parse(text);
}

function login() {
  const verifier = b64url(crypto.randomBytes(64));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const state = b64url(crypto.randomBytes(32));
  let busy = false;
  const server = http.createServer(async (req, res) => {
    const u = new URL(req.url, REDIRECT_URI);
    if (u.pathname === '/success') {
      res.writeHead(200, { 'content-type': 'text/html' }); res.end('<h1>Signed in to Codex</h1>'); return;
    }
    if (u.pathname !== '/auth/callback') { res.writeHead(404); res.end('Not Found'); return; }
    if (u.searchParams.get('state') !== state) { res.writeHead(400); res.end('State mismatch'); return; }
    if (u.searchParams.get('error')) {
      res.writeHead(400); res.end('Sign-in failed');
      process.stderr.write(`Error logging in: ${u.searchParams.get('error')}\n`);
      setImmediate(() => process.exit(1));
      return;
    }
    if (busy) { res.writeHead(409); res.end('Login already in progress'); return; }
    busy = true;
    try {
      writeAuth(await exchange(u.searchParams.get('code') || '', verifier));
      res.writeHead(302, { location: `http://127.0.0.1:${PORT}/success`, connection: 'close' });
      res.end();
      process.stderr.write('Successfully logged in\n');
      setTimeout(() => process.exit(0), 50);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain', connection: 'close' }); res.end(e.message);
      process.stderr.write(`Error logging in: ${e.message}\n`);
      setTimeout(() => process.exit(1), 50);
    }
  });
  server.on('error', (e) => {
    if (e.code === 'EADDRINUSE') process.stderr.write(`Error logging in: Port 127.0.0.1:${PORT} is already in use\n`);
    else process.stderr.write(`Error logging in: ${e.message}\n`);
    process.exit(1);
  });
  server.listen(PORT, '127.0.0.1', () => {
    const url = authorizeUrl(challenge, state);
    process.stderr.write(`Starting local login server on http://127.0.0.1:${PORT}.\n` +
      `If your browser did not open, navigate to this URL to authenticate:\n\n${url}\n\n`);
    if (process.env.BROWSER) {
      try { const c = spawn(process.env.BROWSER, [url], { stdio: 'ignore' }); c.on('error', () => {}); c.unref(); } catch (_) {}
    }
  });
}

function status() {
  try {
    const j = JSON.parse(fs.readFileSync(AUTH, 'utf8'));
    if (j.tokens && j.tokens.access_token) { process.stderr.write('Logged in using ChatGPT\n'); process.exit(0); }
    if (j.OPENAI_API_KEY) { process.stderr.write('Logged in using an API key\n'); process.exit(0); }
  } catch (_) {}
  process.stderr.write('Not logged in\n');
  process.exit(1);
}

const args = process.argv.slice(2);
if (args[0] === 'login' && args[1] === 'status') status();
else if (args[0] === 'login' && args.length === 1) login();
else { process.stderr.write('Usage: codex login [status]\n'); process.exit(2); }
