// Plays the person in front of the browser: opens URL (a device flow's
// verification_uri_complete, or an authorization URL) on the test OpenID
// provider and submits its pages (confirm the user code, log in as LOGIN)
// with plain HTTP requests, following redirects with a cookie jar.
//
//   node approve.mjs URL LOGIN
//
// Exits 0 once the provider reports success (or redirects to a loopback
// callback, which it then calls); prints each step on stderr.

const [url, login] = process.argv.slice(2);
if (!url || !login) {
  console.error('usage: node approve.mjs URL LOGIN');
  process.exit(2);
}

const jar = new Map();
function storeCookies(response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1));
  }
}
const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');

async function request(target, init = {}) {
  const response = await fetch(target, {
    ...init,
    redirect: 'manual',
    headers: { ...(init.headers || {}), cookie: cookieHeader() },
  });
  storeCookies(response);
  return response;
}

// Follows redirects; returns [finalUrl, body].
async function follow(target, init) {
  let response = await request(target, init);
  for (let hops = 0; hops < 20; hops += 1) {
    const location = response.headers.get('location');
    if (!location || response.status < 300 || response.status >= 400) break;
    target = new URL(location, target).toString();
    console.error(`-> ${target.split('?')[0]}`);
    response = await request(target);
  }
  return [target, await response.text(), response.status];
}

function firstForm(html) {
  const form = html.match(/<form[^>]*>[\s\S]*?<\/form>/i);
  if (!form) return null;
  const action = (form[0].match(/action="([^"]*)"/i) || [])[1] || '';
  const fields = new URLSearchParams();
  for (const input of form[0].matchAll(/<input[^>]*>/gi)) {
    const name = (input[0].match(/name="([^"]*)"/i) || [])[1];
    if (!name) continue;
    let value = (input[0].match(/value="([^"]*)"/i) || [])[1] || '';
    if (name === 'login') value = login;
    if (name === 'password') value = 'any';
    fields.set(name, value.replace(/&amp;/g, '&'));
  }
  return { action: action.replace(/&amp;/g, '&'), fields };
}

let [current, body, status] = await follow(url);
for (let step = 0; step < 10; step += 1) {
  if (/success|signed in|complete/i.test(body) && !/<form/i.test(body)) {
    console.error('approved');
    process.exit(0);
  }
  const form = firstForm(body);
  if (!form) {
    console.error(`no form and no success at ${current} (${status}):\n${body.slice(0, 500)}`);
    process.exit(1);
  }
  const target = new URL(form.action || current, current).toString();
  console.error(`submit ${target.split('?')[0]} [${[...form.fields.keys()].join(',')}]`);
  [current, body, status] = await follow(target, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: form.fields.toString(),
  });
  if (new URL(current).pathname === '/callback') {
    console.error('redirected to the loopback callback');
    process.exit(0);
  }
}
console.error('gave up after 10 pages');
process.exit(1);
