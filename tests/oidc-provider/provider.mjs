// A real OpenID Connect provider (panva/oidc-provider 9) for Burrow's integration tests.
//
//   node provider.mjs <config.json>
//
// Listens on 127.0.0.1 (port `port` from the config, or any free port when it is 0 or
// absent), uses `http://127.0.0.1:<port>` as its issuer, and prints exactly one line,
// `listening http://127.0.0.1:<port>`, on stdout once it accepts connections; everything
// else goes to stderr, which the Rust harness (tests/src/oidc.rs) keeps in a file and
// prints when a test fails.
//
// The config file (written by the harness; snake_case, all durations in seconds):
//
//   {
//     "port": 0,                                  // optional
//     "cookie_keys": ["..."],                     // signs the provider's cookies
//     "id_token_ttl_secs": 60,                    // each *_ttl_secs optional
//     "access_token_ttl_secs": 60,
//     "authorization_code_ttl_secs": 60,
//     "session_ttl_secs": 600,
//     "grant_ttl_secs": 600,
//     "interaction_ttl_secs": 600,
//     "clients": [{
//       "client_id": "burrow", "client_secret": "...",         // secret: not for "none"
//       "redirect_uris": ["http://127.0.0.1:1234/callback"],
//       "post_logout_redirect_uris": ["http://127.0.0.1:1234/"],
//       "token_endpoint_auth_method": "client_secret_basic"     // or _post, or none
//     }],
//     "accounts": [{
//       "sub": "u-alice", "preferred_username": "alice", "name": "Alice",
//       "email": "alice@example.test", "groups": ["admins"]
//     }]
//   }
//
// Sign-in is this file's own minimal page (the package's development interactions are
// off): one field `login` (an account's preferred_username) and a button `#submit`; an
// unknown name shows `#error`. There is no consent screen: every configured client is
// treated as first party and granted what it asks for (see `loadExistingGrant`).

import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

// oidc-provider prints its notices with console.info, i.e. on stdout; stdout carries
// only the `listening` line the harness waits for, so send every other line to stderr.
console.log = console.error;
console.info = console.error;

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs <config.json>');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accounts = config.accounts ?? [];

// The issuer has to name the port, which is known only once the socket is bound: bind
// first, then build the provider and hand it the requests.
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port ?? 0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

// A fresh signing key per run (RS256, every OpenID Connect client's baseline): relying
// parties fetch the JWKS, so nothing needs a fixed key, and without one oidc-provider
// would fall back to its published development keys.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  // No external resources (the package's own pages import a web font): the tests'
  // Chromium may have no network, and a page should be done when its HTML is.
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>`;
}

const provider = new Provider(issuer, {
  clients: (config.clients ?? []).map((c) => ({
    client_id: c.client_id,
    ...(c.client_secret !== undefined && { client_secret: c.client_secret }),
    redirect_uris: c.redirect_uris,
    post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // `web` (the default) accepts http:// redirect URIs on any host as long as the
    // client cannot use the implicit grant; `native` would accept http:// only on
    // loopback literals and forbid https://localhost. Burrow's host is a web client.
    application_type: 'web',
  })),

  async findAccount(ctx, sub) {
    const account = accounts.find((a) => a.sub === sub);
    if (!account) return undefined;
    return {
      accountId: account.sub,
      // All of them; oidc-provider keeps only those the granted scopes map to (`claims`).
      async claims() {
        return {
          sub: account.sub,
          preferred_username: account.preferred_username,
          name: account.name,
          email: account.email,
          email_verified: account.email !== undefined,
          groups: account.groups ?? [],
        };
      },
    };
  },

  // Scope -> claims. `groups` is not a standard scope; declaring it here makes the
  // provider accept it and advertise it (and the claim) in its discovery document.
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  // By default (true) an ID token issued with an access token (the code flow) carries
  // only `sub` and the protocol claims, the profile being left to the userinfo endpoint.
  // Relying parties commonly read the user from the ID token, so put them in both.
  conformIdTokenClaims: false,

  // PKCE (S256, the only method v9 knows) for every client; by default oidc-provider
  // requires it only of public clients and merely checks it when a confidential one
  // sends a code_challenge.
  pkce: { required: () => true },

  cookies: { keys: config.cookie_keys ?? ['burrow-test-oidc-provider-cookie-key'] },
  jwks: { keys: [signingKey] },

  ttl: {
    IdToken: config.id_token_ttl_secs ?? 300,
    AccessToken: config.access_token_ttl_secs ?? 300,
    AuthorizationCode: config.authorization_code_ttl_secs ?? 60,
    Session: config.session_ttl_secs ?? 3600,
    Grant: config.grant_ttl_secs ?? 3600,
    Interaction: config.interaction_ttl_secs ?? 600,
  },

  features: {
    // Its own unstyled login and consent pages are replaced by the routes below.
    devInteractions: { enabled: false },
    // end_session_endpoint (on by default in v9; said here because tests rely on it).
    rpInitiatedLogout: {
      enabled: true,
      // The confirmation page: a form the provider supplies plus our button `#logout`.
      async logoutSource(ctx, form) {
        ctx.body = page(
          'Sign out',
          `${form}<button id="logout" type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>`,
        );
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
      },
    },
  },

  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  // No consent screen: each configured client gets, for the signed-in account, every
  // scope (and `claims` parameter claim) it requests. Without a grant covering them
  // the provider would start a `consent` interaction.
  async loadExistingGrant(ctx) {
    const accountId = ctx.oidc.session?.accountId;
    if (!accountId) return undefined;
    const clientId = ctx.oidc.client.clientId;
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(clientId);
    const grant = (grantId && (await ctx.oidc.provider.Grant.find(grantId)))
      || new ctx.oidc.provider.Grant({ accountId, clientId });
    if (ctx.oidc.params.scope) grant.addOIDCScope(ctx.oidc.params.scope);
    if (ctx.oidc.requestParamClaims?.size) grant.addOIDCClaims([...ctx.oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },

  async renderError(ctx, out) {
    ctx.type = 'html';
    const rows = Object.entries(out)
      .map(([k, v]) => `<p><strong>${escapeHtml(k)}</strong>: <span class="${escapeHtml(k)}">${escapeHtml(v)}</span></p>`)
      .join('\n');
    ctx.body = page('Sign-in error', `<div id="provider-error">${rows}</div>`);
  },
});

// Why a request failed, for the harness's log (the browser only sees the error page or
// an `error` redirect).
for (const event of [
  'server_error',
  'authorization.error',
  'grant.error',
  'userinfo.error',
  'end_session.error',
  'discovery.error',
  'jwks.error',
  'introspection.error',
]) {
  provider.on(event, (ctx, err) => {
    console.error(`${event}: ${err?.name ?? ''} ${err?.message ?? err}${err?.error_description ? ` (${err.error_description})` : ''}`);
  });
}

function loginForm(uid, { login = '', error } = {}) {
  const errorHtml = error ? `<p id="error" role="alert">${escapeHtml(error)}</p>` : '';
  return page(
    'Sign in',
    `${errorHtml}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>User name <input name="login" value="${escapeHtml(login)}" autofocus required></label>
  <button id="submit" type="submit">Sign in</button>
</form>`,
  );
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

// The interaction routes: GET shows the login form, POST .../login signs in.
async function interaction(req, res, pathname) {
  const [, , uid, action] = pathname.split('/');
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    // Expired, or the interaction cookie is missing (another browser).
    return send(res, 400, page('Sign-in error', `<p id="error" role="alert">${escapeHtml(err.message)}</p>`));
  }
  if (details.uid !== uid) {
    return send(res, 400, page('Sign-in error', '<p id="error" role="alert">interaction mismatch</p>'));
  }
  if (req.method === 'GET' && action === undefined) {
    return send(res, 200, loginForm(uid));
  }
  if (req.method === 'POST' && action === 'login') {
    const login = (await readForm(req)).get('login') ?? '';
    const account = accounts.find((a) => a.preferred_username === login);
    if (!account) {
      return send(res, 401, loginForm(uid, { login, error: `Unknown user: ${login}` }));
    }
    // Redirects the browser back to the authorization endpoint, which (with the grant
    // from `loadExistingGrant`) redirects it on to the client with a code.
    return provider.interactionFinished(
      req,
      res,
      { login: { accountId: account.sub } },
      { mergeWithLastSubmission: false },
    );
  }
  return send(res, 404, page('Not found', ''));
}

const callback = provider.callback();
server.on('request', (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  if (pathname.startsWith('/interaction/')) {
    interaction(req, res, pathname).catch((err) => {
      console.error('interaction failed:', err);
      if (!res.headersSent) send(res, 500, page('Sign-in error', `<p id="error">${escapeHtml(err.message)}</p>`));
    });
  } else {
    callback(req, res);
  }
});

// oidc-provider validates static clients lazily, at their first request; a mistake in a
// test's client (a fragment in a redirect URI, say) should stop the provider here, with
// the reason on stderr, not surface later as a bare `invalid_client` in the browser.
for (const { client_id: clientId } of config.clients ?? []) {
  try {
    await provider.Client.find(clientId);
  } catch (err) {
    console.error(`client ${clientId} is invalid: ${err.error_description ?? err.message}`);
    process.exit(1);
  }
}

// The harness kills the process on drop; these let a plain Ctrl-C or SIGTERM end it too.
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));

process.stdout.write(`listening ${issuer}\n`);
