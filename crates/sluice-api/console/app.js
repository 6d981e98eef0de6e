// Sluice console. Vanilla JavaScript, no framework, no inline script.
// Rule of this file: text that comes from the gateway (commands, subjects,
// reasons, anything an agent can influence) is only ever inserted with
// textContent / createTextNode, never as HTML.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  let me = null;            // {subject, issuer, groups, admin, csrf, expires_at}
  let events = null;        // EventSource
  let clockSkew = 0;        // server now - local now, in ms
  let lastState = { approvals: [], sessions: [] };
  const cards = new Map();  // approval id -> {key, el}

  // --- DOM helpers -------------------------------------------------------
  function h(tag, attrs, children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of [].concat(children === undefined ? [] : children)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(typeof c === 'object' ? c : document.createTextNode(visible(String(c))));
    }
    return el;
  }
  // Text from agents is shown as it is, except characters that reorder or
  // hide text (bidi overrides and isolates, zero-width and other format
  // characters, control characters but newline and tab): those are shown as
  // a visible marker, so an approver reads what the target will run.
  const HIDDEN = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]/g;
  function visible(text) {
    return text.replace(HIDDEN, (c) => '\u27e8U+' + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0') + '\u27e9');
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function toast(msg) {
    const t = $('toast'); t.textContent = msg;
    clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.textContent = ''; }, 6000);
  }
  function fmtTime(ms) { return ms ? new Date(ms).toLocaleString() : ''; }
  function fmtLeft(ms) {
    if (ms <= 0) return 'expired';
    const s = Math.floor(ms / 1000), m = Math.floor(s / 60), hr = Math.floor(m / 60);
    if (hr > 0) return hr + 'h ' + (m % 60) + 'm left';
    if (m > 0) return m + 'm ' + String(s % 60).padStart(2, '0') + 's left';
    return s + 's left';
  }

  // --- HTTP ----------------------------------------------------------------
  async function api(method, path, body) {
    const headers = { 'accept': 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (method !== 'GET' && me) headers['x-sluice-csrf'] = me.csrf;
    const res = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (res.status === 401 && path !== '/console/session') { signedOut('Your console session ended; sign in again.'); }
    if (!res.ok) {
      const detail = data && data.detail ? data.detail : (res.status + ' ' + res.statusText);
      const err = new Error(detail); err.status = res.status; throw err;
    }
    return data;
  }

  // --- sign-in -------------------------------------------------------------
  function showView(name) {
    for (const sec of document.querySelectorAll('main > section')) sec.hidden = sec.id !== 'view-' + name;
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.dataset.view === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
  }
  function signedOut(msg) {
    me = null;
    if (events) { events.close(); events = null; }
    $('nav').hidden = true; $('signout').hidden = true; $('whoami').textContent = '';
    cards.clear(); clear($('approvals-list')); liveRows.clear(); clear($('live-list'));
    $('signin-error').textContent = msg || '';
    showView('signin');
    loadProviders();
    $('token').focus();
  }
  // Identity providers with a client for browser sign-in (authorization code + PKCE).
  async function loadProviders() {
    const list = $('oidc-providers');
    try {
      const providers = await api('GET', '/console/oidc/providers');
      clear(list);
      for (const p of providers) {
        list.appendChild(h('li', {}, h('a', { class: 'button', href: p.start }, 'Sign in with ' + p.issuer)));
      }
    } catch (e) { /* the token form still works */ }
  }
  function signedIn(who) {
    me = who;
    $('nav').hidden = false; $('signout').hidden = false;
    $('whoami').textContent = who.subject + ' (' + who.groups.join(', ') + ')';
    $('token').value = '';
    connectEvents();
    route();
  }
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('signin-error').textContent = '';
    try {
      signedIn(await api('POST', '/console/session', { token: $('token').value.trim() }));
    } catch (e) { $('signin-error').textContent = e.message; }
  });
  $('signout').addEventListener('click', async () => {
    try { await api('POST', '/console/session/end', {}); } catch (e) { /* signed out anyway */ }
    signedOut('Signed out.');
  });

  // --- live state ----------------------------------------------------------
  function connectEvents() {
    if (events) events.close();
    events = new EventSource('/console/events');
    events.addEventListener('state', (ev) => {
      const msg = JSON.parse(ev.data);
      clockSkew = msg.now_ms - Date.now();
      lastState = msg.state;
      $('live').classList.remove('off');
      renderApprovals();
      renderLive();
    });
    events.addEventListener('signed_out', (ev) => {
      const msg = JSON.parse(ev.data);
      signedOut(msg.detail);
    });
    events.onerror = async () => {
      $('live').classList.add('off');
      if (events && events.readyState === EventSource.CLOSED) {
        try { await api('GET', '/console/session'); setTimeout(connectEvents, 2000); } catch (e) { /* api() shows sign-in */ }
      }
    };
  }

  // --- approvals -----------------------------------------------------------
  const SQL_BREAKS = /^(select|from|where|and|or|group|order|having|limit|offset|returning|set|values|join|left|right|inner|outer|union|insert|update|delete|with|on)$/i;
  // A light pretty-printer: a line break before top-level clause keywords,
  // never inside quotes or comments. Output is plain text.
  function prettySql(sql) {
    if (sql.length > 20000) return sql;
    let out = '', word = '', i = 0;
    const flush = () => {
      if (word && SQL_BREAKS.test(word) && out.trim() !== '' && !/\n\s*$/.test(out) && !/^(and|or|on|left|right|inner|outer|join)$/i.test(word)) out = out.replace(/[ \t]+$/, '') + '\n';
      out += word; word = '';
    };
    while (i < sql.length) {
      const c = sql[i], two = sql.substr(i, 2);
      if (/[A-Za-z_]/.test(c)) { word += c; i++; continue; }
      flush();
      let end = i + 1;
      if (c === "'" || c === '"') { end = sql.indexOf(c, i + 1); end = end < 0 ? sql.length : end + 1; }
      else if (two === '--') { end = sql.indexOf('\n', i); end = end < 0 ? sql.length : end; }
      else if (two === '/*') { end = sql.indexOf('*/', i + 2); end = end < 0 ? sql.length : end + 2; }
      out += sql.slice(i, end); i = end;
    }
    flush();
    return out;
  }
  function describeKind(kind) {
    if (!kind) return null;
    switch (kind.type) {
      case 'sql_simple': return 'SQL statement';
      case 'sql_execute': return 'prepared SQL statement ' + (kind.statement || '(unnamed)');
      case 'function_call': return 'function call by oid ' + kind.function_oid;
      case 'exec': return 'shell command line';
      case 'shell': return 'interactive shell' + (kind.pty ? ' (terminal)' : '');
      case 'http_request': return 'HTTP ' + kind.method + ' ' + kind.path;
      case 'kube_request': return 'Kubernetes ' + kind.verb + ' ' + kind.resource +
        (kind.namespace ? ' in namespace ' + kind.namespace : '') + (kind.name ? ' named ' + kind.name : '');
      case 'subsystem': return 'subsystem ' + kind.name;
      case 'forward': return 'forwarding ' + kind.kind;
      case 'other': return kind.operation;
      default: return kind.type;
    }
  }
  const PROTOCOL_WHAT = { postgres: 'SQL', ssh: 'shell command', http: 'HTTP request', kubernetes: 'Kubernetes request' };
  // The classification the rules matched on (SQL: per statement).
  function analysis(a) {
    if (!a) return null;
    if (a.error) return h('div', { class: 'error' }, 'does not parse: ' + a.error);
    if (a.programs) {
      return h('ul', { class: 'analysis' }, a.programs.map((p) => h('li', {}, [h('code', {}, p.command),
        p.runs_anything ? h('span', { class: 'error' }, ' — can run anything') : ''])));
    }
    if (a.kube) {
      return h('ul', { class: 'analysis' }, h('li', {}, [h('strong', {}, a.kube.verb), ' ' + a.kube.resource,
        a.kube.name ? ' ' + a.kube.name : '', a.kube.namespace ? ' in namespace ' + a.kube.namespace : ' (cluster-wide)']));
    }
    const list = h('ul', { class: 'analysis' });
    for (const st of a.statements || []) {
      const parts = [h('strong', {}, st.command)];
      if (st.classes.length) parts.push(' — ' + st.classes.join(', '));
      if (st.writes.length) parts.push('; writes ' + st.writes.join(', '));
      if (st.reads.length) parts.push('; reads ' + st.reads.join(', '));
      if (st.functions.length) parts.push('; calls ' + st.functions.join(', '));
      if (st.unbounded_write) parts.push(h('span', { class: 'error' }, '; unbounded write'));
      list.appendChild(h('li', {}, parts));
    }
    return list;
  }
  function approvalCard(r) {
    const ctx = r.context || {};
    const isSql = ctx.protocol === 'postgres' || (ctx.kind && /^sql_/.test(ctx.kind.type || ''));
    const dl = h('dl', {}, [
      h('dt', {}, 'Who'), h('dd', {}, [r.subject, ctx.groups && ctx.groups.length ? ' — groups ' + ctx.groups.join(', ') : '',
        ctx.issuer && ctx.issuer !== 'sluice' ? ' — issuer ' + ctx.issuer : '']),
      h('dt', {}, 'Token'), h('dd', { class: 'mono' }, [ctx.token_id || '?', ...(ctx.lineage || []).map((t) => ' ← exchanged from ' + t)]),
      h('dt', {}, 'Where'), h('dd', {}, [r.connection, ctx.protocol ? ' (' + ctx.protocol + ')' : '', ' from ', ctx.client_addr || '?', ' — session ',
        h('a', { href: '#replay/' + encodeURIComponent(r.session_id) }, r.session_id)]),
      h('dt', {}, 'What'), h('dd', {}, [describeKind(ctx.kind) || PROTOCOL_WHAT[ctx.protocol] || 'command', analysis(ctx.analysis)]),
      h('dt', {}, 'Rule'), h('dd', {}, [h('strong', {}, r.rule), r.message ? ' — ' + r.message : '']),
      h('dt', {}, 'Approvers'), h('dd', {}, r.approvers.join(', ')),
      h('dt', {}, 'Requested'), h('dd', {}, fmtTime(r.requested_at_ms)),
    ]);
    const pre = h('pre', { class: 'command', 'aria-label': 'command' }, isSql ? prettySql(r.command) : r.command);
    const kids = [
      h('header', {}, [
        h('span', { class: 'badge ' + r.state }, r.state),
        h('strong', {}, r.connection),
        r.state === 'pending' ? h('span', { class: 'timeleft', 'data-expires': r.expires_at_ms }, fmtLeft(r.expires_at_ms - Date.now() - clockSkew)) : null,
        h('span', { class: 'muted mono' }, r.id),
      ]),
      pre,
    ];
    if (ctx.command_context && ctx.command_context.length) {
      kids.push(h('pre', { class: 'command' }, ctx.command_context.join('\n')));
    }
    kids.push(dl);
    if (r.state !== 'pending') {
      kids.push(h('p', {}, [r.state + (r.decided_by ? ' by ' + r.decided_by : ''), r.reason ? ': ' + r.reason : '']));
    } else if (r.can_decide) {
      const reason = h('input', { type: 'text', name: 'reason', placeholder: 'Reason (shown to the requester)', 'aria-label': 'reason', autocomplete: 'off', maxlength: '500' });
      const approve = h('button', { type: 'button', class: 'approve' }, 'Approve');
      const deny = h('button', { type: 'button', class: 'danger deny' }, 'Deny');
      const decide = async (verb) => {
        approve.disabled = deny.disabled = true;
        try {
          await api('POST', '/api/v1/approvals/' + encodeURIComponent(r.id) + '/' + verb, { reason: reason.value });
          toast((verb === 'approve' ? 'Approved ' : 'Denied ') + r.id);
        } catch (e) { toast(e.message); approve.disabled = deny.disabled = false; }
      };
      approve.addEventListener('click', () => decide('approve'));
      deny.addEventListener('click', () => decide('deny'));
      // Enter in the reason field does nothing: a decision is always an explicit button.
      reason.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') ev.preventDefault(); });
      kids.push(h('div', { class: 'decide' }, [reason, approve, deny]));
    } else {
      kids.push(h('p', { class: 'muted' }, r.subject === (me && me.subject) ? 'Your own request: another approver decides it.' : 'You may not decide this request.'));
    }
    return h('li', { class: 'card approval ' + r.state, 'data-id': r.id }, kids);
  }
  function renderApprovals() {
    const list = $('approvals-list');
    const seen = new Set();
    let prev = null;
    for (const r of lastState.approvals) {
      seen.add(r.id);
      const key = JSON.stringify(r);
      let entry = cards.get(r.id);
      if (!entry || entry.key !== key) {
        const el = approvalCard(r);
        if (entry) list.replaceChild(el, entry.el);
        entry = { key, el }; cards.set(r.id, entry);
      }
      const want = prev ? prev.nextSibling : list.firstChild;
      if (want !== entry.el) list.insertBefore(entry.el, want);
      prev = entry.el;
    }
    for (const [id, entry] of cards) {
      if (!seen.has(id)) { entry.el.remove(); cards.delete(id); }
    }
    const pending = lastState.approvals.filter((r) => r.state === 'pending').length;
    $('approvals-empty').hidden = lastState.approvals.length > 0;
    $('pending-count').textContent = pending ? String(pending) : '';
    document.title = (pending ? '(' + pending + ') ' : '') + 'Sluice console';
  }
  setInterval(() => {
    for (const el of document.querySelectorAll('.timeleft[data-expires]')) {
      el.textContent = fmtLeft(Number(el.dataset.expires) - Date.now() - clockSkew);
    }
  }, 1000);

  // --- sessions ------------------------------------------------------------
  const liveRows = new Map(); // session id -> {key, el}
  function liveRow(s) {
    const reason = h('input', { type: 'text', placeholder: 'Reason', 'aria-label': 'reason for ending ' + s.id, autocomplete: 'off' });
    const kill = h('button', { type: 'button', class: 'danger kill' }, 'End session');
    kill.addEventListener('click', async () => {
      kill.disabled = true;
      try {
        await api('POST', '/api/v1/sessions/' + encodeURIComponent(s.id) + '/kill', { reason: reason.value });
        toast('Ended ' + s.id);
      } catch (e) { toast(e.message); kill.disabled = false; }
    });
    return h('li', { class: 'card live-session', 'data-id': s.id }, [
      h('header', {}, [h('strong', {}, s.subject), h('span', {}, s.connection + ' (' + s.protocol + ')'),
        h('a', { href: '#replay/' + encodeURIComponent(s.id), class: 'mono' }, s.id)]),
      h('p', { class: 'muted' }, 'from ' + s.client_addr + ' since ' + fmtTime(s.started_at_ms) + ', token ' + s.token_id),
      h('div', { class: 'decide' }, [reason, kill]),
    ]);
  }
  // Rows are kept while their session is unchanged, so a reason being typed survives updates.
  function renderLive() {
    const list = $('live-list');
    const seen = new Set();
    let prev = null;
    for (const s of lastState.sessions) {
      seen.add(s.id);
      const key = JSON.stringify(s);
      let entry = liveRows.get(s.id);
      if (!entry || entry.key !== key) {
        const el = liveRow(s);
        if (entry) list.replaceChild(el, entry.el);
        entry = { key, el }; liveRows.set(s.id, entry);
      }
      const want = prev ? prev.nextSibling : list.firstChild;
      if (want !== entry.el) list.insertBefore(entry.el, want);
      prev = entry.el;
    }
    for (const [id, entry] of liveRows) {
      if (!seen.has(id)) { entry.el.remove(); liveRows.delete(id); }
    }
    $('live-empty').hidden = lastState.sessions.length > 0;
  }
  async function loadHistory() {
    const f = new FormData($('filters'));
    const q = new URLSearchParams();
    for (const k of ['subject', 'connection', 'protocol', 'state', 'decision']) if (f.get(k)) q.set(k, f.get(k));
    if (f.get('since')) q.set('since_ms', String(new Date(f.get('since')).getTime()));
    if (f.get('until')) q.set('until_ms', String(new Date(f.get('until')).getTime()));
    const body = $('history').tBodies[0];
    try {
      const rows = await api('GET', '/console/api/history?' + q.toString());
      clear(body);
      for (const s of rows) {
        body.appendChild(h('tr', {}, [
          h('td', {}, h('a', { href: '#replay/' + encodeURIComponent(s.id), class: 'mono' }, s.id.slice(0, 13))),
          h('td', {}, s.subject), h('td', {}, s.connection), h('td', {}, s.protocol), h('td', {}, s.client_addr),
          h('td', {}, fmtTime(s.started_at_ms)), h('td', {}, s.live ? 'live' : fmtTime(s.ended_at_ms) + (s.end_reason ? ' — ' + s.end_reason : '')),
          h('td', {}, String(s.commands)),
        ]));
      }
      if (!rows.length) body.appendChild(h('tr', {}, h('td', { colspan: '8', class: 'muted' }, 'No session matches.')));
    } catch (e) { toast(e.message); }
  }
  $('filters').addEventListener('submit', (ev) => { ev.preventDefault(); loadHistory(); });

  // --- replay --------------------------------------------------------------
  function describeEvent(e) {
    switch (e.event) {
      case 'session_start': return ['session opened by ' + e.identity.subject + ' (' + e.identity.groups.join(', ') + ') on ' + e.connection + ' from ' + e.client_addr];
      case 'command_decided': return [h('span', { class: 'badge ' + e.verdict.action }, e.verdict.action), ' #' + e.command_id + (e.verdict.rule ? ' by rule ' + e.verdict.rule : '') + ': ',
        h('pre', { class: 'command' }, e.command.text)];
      case 'command_finished': {
        const o = e.outcome, parts = ['#' + e.command_id + ' finished: ' + (o.tag || '') + ', ' + o.rows + ' rows, ' + o.bytes + ' bytes'];
        const masked = Object.entries(o.masked || {}).map(([k, v]) => k + ' ×' + v).join(', ');
        if (masked) parts.push(', masked ' + masked);
        if (o.error) parts.push(h('div', { class: 'error' }, 'error: ' + o.error));
        return parts;
      }
      case 'approval_requested': return ['approval ' + e.approval_id + ' requested for #' + e.command_id + ' by rule ' + e.rule + ' (approvers ' + e.approvers.join(', ') + ')'];
      case 'approval_decided': return [h('span', { class: 'badge ' + e.state }, e.state), ' approval ' + e.approval_id + ' by ' + e.by + (e.reason ? ': ' + e.reason : '')];
      case 'session_end': return ['session ended: ' + e.reason];
      case 'stream_output': return ['#' + e.command_id + ' output: ' + e.bytes + ' bytes'];
      case 'window_resized': return ['#' + e.command_id + ' terminal ' + e.cols + '×' + e.rows];
      case 'file_transfer': return ['#' + e.command_id + ' ' + e.direction + ' ' + e.path + ' (' + e.bytes + ' bytes)'];
      default: return [e.event];
    }
  }
  async function loadReplay(id) {
    $('replay-id').textContent = id;
    const list = $('timeline'); clear(list);
    $('player-box').hidden = true; clear($('player'));
    try {
      const t = await api('GET', '/console/api/sessions/' + encodeURIComponent(id) + '/timeline');
      const start = t.entries.length ? t.entries[0].at_ms : 0;
      $('replay-meta').textContent = (t.live ? 'live, ' : '') + t.entries.length + ' records' + (t.truncated ? ' (first ones shown)' : '');
      let terminal = false;
      for (const e of t.entries) {
        if (e.event.event === 'stream_output' || (e.event.event === 'command_decided' && e.event.command.kind.type === 'shell')) terminal = true;
        list.appendChild(h('li', { 'data-event': e.event.event }, [h('span', { class: 'when' }, '+' + ((e.at_ms - start) / 1000).toFixed(3) + 's'), ...describeEvent(e.event)]));
      }
      if (terminal && window.SluicePlayer) {
        const res = await fetch('/console/api/sessions/' + encodeURIComponent(id) + '/cast', { credentials: 'same-origin', cache: 'no-store' });
        if (res.ok) {
          $('player-box').hidden = false;
          window.SluicePlayer.mount($('player'), await res.text());
        }
      }
    } catch (e) { $('replay-meta').textContent = e.message; }
  }

  // --- connections ---------------------------------------------------------
  // The token never goes into a command's arguments, where any local user
  // reads it in `ps`: psql takes it from the environment, curl its header
  // from standard input (printf is built into every common shell), ssh at
  // its password prompt (only the token is copied for ssh).
  function clientCommand(c, token) {
    const [host, port] = (c.address || 'gateway:0').split(/:(?=\d+$)/);
    switch (c.kind) {
      case 'postgres': return 'PGPASSWORD="' + token + '" psql "postgresql://' + uriUser(me.subject) + '@' + host + ':' + port + '/' + c.name + '"';
      case 'ssh': return 'ssh -p ' + port + ' ' + c.name + '@' + host + '\npassword: ' + token;
      case 'http': return 'printf \'Authorization: Bearer %s\\n\' "' + token + '" | curl -H @- https://' + host + ':' + port + '/' + c.name + '/';
      case 'kubernetes': return ['apiVersion: v1', 'kind: Config', 'clusters:', '- name: ' + c.name, '  cluster:', '    server: https://' + host + ':' + port + '/' + c.name,
        'users:', '- name: ' + JSON.stringify(me.subject), '  user:', '    token: ' + token, 'contexts:', '- name: ' + c.name, '  context: {cluster: ' + c.name + ', user: ' + JSON.stringify(me.subject) + '}',
        'current-context: ' + c.name].join('\n');
      default: return c.kind + ' ' + host + ':' + port + ' token ' + token;
    }
  }
  // What the copy button puts on the clipboard, and what it says: the
  // command, or for ssh the token alone, for its password prompt.
  function clipboard(c, token) {
    return c.kind === 'ssh'
      ? { text: token, said: 'The token (paste it at the password prompt) is copied' }
      : { text: clientCommand(c, token), said: 'Copied' };
  }
  // A user name in a URI: every byte but unreserved ones percent-encoded
  // (libpq ends the user at the first `@`; `!` would trigger bash's history
  // expansion inside the double quotes).
  function uriUser(name) {
    return encodeURIComponent(name).replace(/[!'()*]/g, ch => '%' + ch.charCodeAt(0).toString(16).toUpperCase());
  }
  async function loadConnections() {
    const list = $('connections-list'); clear(list);
    try {
      const conns = await api('GET', '/console/api/connections');
      if (!conns.length) list.appendChild(h('li', { class: 'muted' }, 'Your groups open no connection.'));
      for (const c of conns) {
        const out = h('pre', { class: 'command' }, c.address ? clientCommand(c, '$SLUICE_TOKEN') : 'no listener enabled for ' + c.kind);
        const btn = h('button', { type: 'button' }, 'Copy with a fresh token');
        btn.disabled = !c.address;
        btn.addEventListener('click', async () => {
          try {
            const t = await api('POST', '/api/v1/token/exchange', { connection: c.name, ttl: '15m' });
            out.textContent = clientCommand(c, t.access_token);
            const copy = clipboard(c, t.access_token);
            try { await navigator.clipboard.writeText(copy.text); toast(copy.said + '; it expires in 15 minutes.'); } catch (e) { toast('Select the command to copy it.'); }
          } catch (e) { toast(e.message); }
        });
        list.appendChild(h('li', { class: 'card' }, [h('header', {}, [h('strong', {}, c.name), h('span', { class: 'muted' }, c.kind + (c.address ? ' at ' + c.address : ''))]), out, btn]));
      }
    } catch (e) { toast(e.message); }
  }

  // --- audit ---------------------------------------------------------------
  async function loadAudit() {
    const box = $('audit-status'); clear(box);
    box.appendChild(h('p', { class: 'muted' }, 'Verifying every chain…'));
    try {
      const a = await api('GET', '/console/api/audit');
      clear(box);
      const b = a.report.first_break;
      box.appendChild(h('p', {}, [h('span', { class: 'badge ' + (a.intact ? 'allow' : 'deny') }, a.intact ? 'intact' : 'broken'),
        ' ' + a.report.sessions + ' sessions, ' + a.report.records + ' records verified']));
      if (b) box.appendChild(h('pre', { class: 'command' }, JSON.stringify(b, null, 2)));
      const lc = a.latest_checkpoint;
      if (lc) {
        const c = lc.checkpoint;
        box.appendChild(h('p', { class: 'checkpoint' }, [h('span', { class: 'badge ' + (lc.signature_valid ? 'allow' : 'deny') }, lc.signature_valid ? 'signed' : 'bad signature'),
          ' latest checkpoint: ' + c.size + ' records, root ', h('code', {}, c.root.slice(0, 16) + '…'), ', ' + fmtTime(c.at_ms) + ', key ' + c.key_id]));
      } else {
        box.appendChild(h('p', { class: 'muted checkpoint' }, 'No signed checkpoint published by this gateway process yet.'));
      }
    } catch (e) { clear(box); box.appendChild(h('p', { class: 'muted' }, e.message)); }
  }
  $('revoke-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target), body = {};
    for (const k of ['token_id', 'token', 'reason']) if (f.get(k)) body[k] = String(f.get(k)).trim();
    try {
      const r = await api('POST', '/api/v1/tokens/revoke', body);
      $('revoke-result').textContent = 'Revoked ' + r.token_id + '; ' + r.sessions_ended + ' live session(s) ended.';
      ev.target.reset();
    } catch (e) { $('revoke-result').textContent = e.message; }
  });

  // --- routing -------------------------------------------------------------
  function route() {
    if (!me) return;
    const hash = decodeURIComponent(location.hash.replace(/^#/, '')) || 'approvals';
    const [view, arg] = [hash.split('/')[0], hash.split('/').slice(1).join('/')];
    switch (view) {
      case 'sessions': showView('sessions'); loadHistory(); break;
      case 'replay': showView('replay'); loadReplay(arg); break;
      case 'connections': showView('connections'); loadConnections(); break;
      case 'audit': showView('audit'); loadAudit(); break;
      default: showView('approvals');
    }
  }
  window.addEventListener('hashchange', route);

  api('GET', '/console/session').then(signedIn, () => signedOut(''));
})();
