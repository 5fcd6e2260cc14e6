#!/usr/bin/env node
// STAND-IN for Google's `gemini` CLI sign-in, for polydev's tests only. It is
// not Gemini CLI: it imitates its first-run "Login with Google" screen (SPEC
// §3) against the local OAuth stand-in named by POLYDEV_STANDIN_OAUTH (default:
// the real hosts, unreachable offline, so it fails like the real CLI with exit
// 41). Needs a real TTY. Install it as `gemini` in a test image.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const readline = require('readline');
const { spawn } = require('child_process');

const CLIENT_ID = '681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com';
const SCOPES = [
  'https://www.googleapis.com/auth/cloud-platform',
  'https://www.googleapis.com/auth/userinfo.email',
  'https://www.googleapis.com/auth/userinfo.profile',
];
const STANDIN = (process.env.POLYDEV_STANDIN_OAUTH || '').replace(/\/$/, '');
const AUTHORIZE = (STANDIN || 'https://accounts.google.com') + '/o/oauth2/v2/auth';
const TOKEN = (STANDIN || 'https://oauth2.googleapis.com') + '/token';
const PASTE_REDIRECT = STANDIN ? STANDIN + '/authcode' : 'https://codeassist.google.com/authcode';
const DIR = path.join(os.homedir(), '.gemini');
const CREDS = path.join(DIR, 'oauth_creds.json');
const FATAL_AUTH_EXIT = 41;

const b64url = (b) => b.toString('base64url');
const say = (s) => process.stdout.write(s);

function fatal(message) {
  say(`\nFatalAuthenticationError: ${message}\n`);
  process.exit(FATAL_AUTH_EXIT);
}

function writeJson(file, obj) {
  const tmp = file + '.tmp-' + process.pid;
  fs.writeFileSync(tmp, JSON.stringify(obj, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

function selectedType() {
  try { return JSON.parse(fs.readFileSync(path.join(DIR, 'settings.json'), 'utf8')).security.auth.selectedType; } catch (_) { return undefined; }
}

function loggedIn() {
  try { const j = JSON.parse(fs.readFileSync(CREDS, 'utf8')); return !!(j.access_token && j.refresh_token); } catch (_) { return false; }
}

function save(tok) {
  fs.mkdirSync(DIR, { recursive: true, mode: 0o700 });
  writeJson(CREDS, {
    access_token: tok.access_token, refresh_token: tok.refresh_token, scope: tok.scope || SCOPES.join(' '),
    token_type: tok.token_type || 'Bearer', id_token: tok.id_token, expiry_date: Date.now() + (tok.expires_in || 3600) * 1000,
  });
  let email = 'user@example.test';
  try { email = JSON.parse(Buffer.from(tok.id_token.split('.')[1], 'base64url')).email || email; } catch (_) {}
  writeJson(path.join(DIR, 'google_accounts.json'), { active: email, old: [] });
  const settingsFile = path.join(DIR, 'settings.json');
  let settings = {};
  try { settings = JSON.parse(fs.readFileSync(settingsFile, 'utf8')); } catch (_) {}
  settings.security = settings.security || {};
  settings.security.auth = Object.assign({}, settings.security.auth, { selectedType: 'oauth-personal' });
  writeJson(settingsFile, settings);
}

async function exchange(params) {
  let last;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const res = await fetch(TOKEN, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(Object.assign({ client_id: CLIENT_ID, grant_type: 'authorization_code' }, params)).toString(),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`invalid response from token endpoint (${res.status}): ${text}`);
      return JSON.parse(text);
    } catch (e) {
      last = e;
      const c = e.cause;
      if (!c) break; // an answer from the server: no point retrying
      last = new Error(`request to ${TOKEN} failed, reason: ${c.message || c.code}`);
      await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
    }
  }
  throw last;
}

function prompt(rl) {
  say('\nAuthenticated via "oauth-personal".\n\n> ');
  rl.on('line', (line) => {
    if (line.trim() === '/quit') process.exit(0);
    say('(stand-in: no model here)\n> ');
  });
  rl.on('close', () => process.exit(0));
}

function pasteMode(rl) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const state = crypto.randomBytes(32).toString('hex');
  const q = new URLSearchParams({
    redirect_uri: PASTE_REDIRECT, access_type: 'offline', scope: SCOPES.join(' '),
    code_challenge_method: 'S256', code_challenge: challenge, state, response_type: 'code', client_id: CLIENT_ID,
  });
  say('Please visit the following URL to authorize the application:\n\n\x1b[36m' + `${AUTHORIZE}?${q}` + '\x1b[39m\n\n');
  rl.question('Enter the authorization code: ', async (code) => {
    code = code.trim();
    if (!code) fatal('Authorization code is required.');
    try {
      save(await exchange({ code, code_verifier: verifier, redirect_uri: PASTE_REDIRECT }));
    } catch (e) {
      fatal(`Failed to authenticate with user code. ${e.message}`);
    }
    prompt(rl);
  });
}

function browserMode(rl) {
  const state = crypto.randomBytes(32).toString('hex');
  const port = parseInt(process.env.OAUTH_CALLBACK_PORT || '0', 10);
  const server = http.createServer(async (req, res) => {
    const u = new URL(req.url, 'http://127.0.0.1');
    if (u.pathname !== '/oauth2callback') { res.writeHead(404); res.end(); return; }
    if (u.searchParams.get('state') !== state) { res.writeHead(400); res.end('State mismatch. Possible CSRF attack'); fatal('State mismatch.'); }
    if (u.searchParams.get('error')) { res.writeHead(400); res.end('Failed'); fatal(`Google OAuth error: ${u.searchParams.get('error')}`); }
    try {
      save(await exchange({ code: u.searchParams.get('code') || '', redirect_uri: redirectUri }));
      res.writeHead(301, { location: 'https://developers.google.com/gemini-code-assist/auth_success_gemini' }); res.end();
      server.close();
      prompt(rl);
    } catch (e) {
      res.writeHead(301, { location: 'https://developers.google.com/gemini-code-assist/auth_failure_gemini' }); res.end();
      fatal(`Failed to login. Message: ${e.message}`);
    }
  });
  let redirectUri;
  server.on('error', (e) => fatal(`Failed to start the OAuth callback server: ${e.message}`));
  server.listen(port, '127.0.0.1', () => {
    redirectUri = `http://127.0.0.1:${server.address().port}/oauth2callback`;
    const q = new URLSearchParams({
      redirect_uri: redirectUri, access_type: 'offline', scope: SCOPES.join(' '), state, response_type: 'code', client_id: CLIENT_ID,
    });
    const url = `${AUTHORIZE}?${q}`;
    say('\nCode Assist login required.\nAttempting to open authentication page in your browser.\n' +
      'Otherwise navigate to:\n\n' + url + '\n\nWaiting for authentication...\n');
    const c = spawn('xdg-open', [url], { stdio: 'ignore' });
    c.on('error', () => say('Failed to open browser automatically.\n'));
    c.unref();
  });
}

function main() {
  if (!process.stdin.isTTY || !process.stdout.isTTY) {
    process.stderr.write('Error: this stand-in gemini needs an interactive terminal (stdin and stdout must be a TTY).\n');
    process.exit(1);
  }
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: true });
  say('\n  GEMINI (stand-in)\n\n');
  if (loggedIn()) return prompt(rl);
  const paste = process.env.NO_BROWSER === 'true' || process.env.DEBIAN_FRONTEND === 'noninteractive' || !process.env.DISPLAY;
  const go = () => (paste ? pasteMode(rl) : browserMode(rl));
  // Like Gemini CLI 0.61 in a terminal: the sign-in starts only when the
  // settings name an auth type (GOOGLE_GENAI_USE_GCA counts only without a
  // terminal); otherwise the auth menu waits for a choice.
  if (selectedType() === 'oauth-personal') return go();
  say('How would you like to authenticate for this project?\n\n  ● 1. Login with Google\n    2. Use Gemini API Key\n    3. Vertex AI\n\n(Press Enter to select)\n');
  rl.once('line', go);
}

main();
