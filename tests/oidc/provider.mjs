// A real OpenID provider (npm oidc-provider, OpenID certified) for Sluice's
// end-to-end tests. Loopback only; every secret here is a throwaway test value.
//
//   node provider.mjs PORT
//
// Prints `ready http://127.0.0.1:PORT` once it listens. It issues JWT access
// tokens (resource indicators) for the resource `urn:sluice` (aud `sluice`)
// and `urn:other` (aud `other`), with these clients:
//
//   agent          client credentials, flat claim   groups = ["sluice-agents"]
//   nested-agent   client credentials, nested claim realm_access.roles = ["db-readers"]
//   bare-agent     client credentials, no groups claim
//   short-agent    client credentials, groups ["sluice-agents"], tokens live 6 s
//   cli            public client: device flow, authorization code + PKCE (loopback)
//   console        public web client, authorization code + PKCE, registered only
//                  when CONSOLE_REDIRECT_URI is set (the operator console's callback)
//
// People log in through the development interactions with any login name;
// `alice` is in ["sluice-agents"], others in no group.
//
// Test-only admin endpoints (not part of any OpenID API):
//   POST /admin/rotate   replaces the signing key (a new kid); the old one is gone
//   GET  /admin/public.pem  the current public key (SPKI PEM), for algorithm-confusion attacks

import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);
if (!port) {
  console.error('usage: node provider.mjs PORT');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };
}

const CLIENT_CLAIMS = {
  agent: { groups: ['sluice-agents'] },
  'short-agent': { groups: ['sluice-agents'] },
  'nested-agent': { realm_access: { roles: ['db-readers'] } },
  'bare-agent': {},
};
const ACCOUNT_GROUPS = { alice: ['sluice-agents'] };

const secret = (id) => `${id}-secret`;
const machine = (id) => ({
  client_id: id,
  client_secret: secret(id),
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
});

function configuration(key) {
  return {
    clients: [
      ...Object.keys(CLIENT_CLAIMS).map(machine),
      {
        client_id: 'cli',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code', 'refresh_token'],
        response_types: ['code'],
        // Native clients may use any port on a loopback redirect (RFC 8252 7.3).
        redirect_uris: ['http://127.0.0.1/callback'],
      },
      ...(process.env.CONSOLE_REDIRECT_URI
        ? [{
          client_id: 'console',
          application_type: 'web',
          token_endpoint_auth_method: 'none',
          grant_types: ['authorization_code'],
          response_types: ['code'],
          redirect_uris: [process.env.CONSOLE_REDIRECT_URI],
        }]
        : []),
    ],
    jwks: { keys: [key] },
    claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
    scopes: ['openid', 'email', 'groups', 'offline_access'],
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: `${id}@example.com`, groups: ACCOUNT_GROUPS[id] || [] };
        },
      };
    },
    // Groups go into JWT access tokens for Sluice.
    async extraTokenClaims(ctx, token) {
      if (token.kind !== 'AccessToken' && token.kind !== 'ClientCredentials') return undefined;
      if (token.accountId) {
        return { groups: ACCOUNT_GROUPS[token.accountId] || [], email: `${token.accountId}@example.com` };
      }
      return { client_id: token.clientId, ...(CLIENT_CLAIMS[token.clientId] || {}) };
    },
    // Every login is granted what it asks for, without a consent page.
    async loadExistingGrant(ctx) {
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email groups offline_access');
      for (const resource of ['urn:sluice', 'urn:other']) {
        grant.addResourceScope(resource, 'openid email groups');
      }
      await grant.save();
      return grant;
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:sluice',
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resource, client) {
          if (resource !== 'urn:sluice' && resource !== 'urn:other') {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: 'openid email groups',
            audience: resource === 'urn:sluice' ? 'sluice' : 'other',
            accessTokenTTL: client.clientId === 'short-agent' ? 6 : 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    pkce: { required: () => true },
    ttl: {
      AccessToken: 600,
      // Per client: short-agent's tokens expire quickly (expiry tests).
      ClientCredentials: (ctx, token, client) => (client.clientId === 'short-agent' ? 6 : 600),
      DeviceCode: 600,
      Grant: 3600,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
    },
    cookies: { keys: ['sluice-test-cookie-key'] },
  };
}

let key = newKey();
let provider = new Provider(issuer, configuration(key));
let handler = provider.callback();

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/admin/rotate') {
    // A new instance with a new key; the memory adapter (grants, sessions)
    // is shared by all instances in this process.
    key = newKey();
    provider = new Provider(issuer, configuration(key));
    handler = provider.callback();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kid: key.kid }));
    return;
  }
  if (req.method === 'GET' && req.url === '/admin/public.pem') {
    const pem = crypto.createPublicKey({ key, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    res.writeHead(200, { 'content-type': 'application/x-pem-file' });
    res.end(pem);
    return;
  }
  handler(req, res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
