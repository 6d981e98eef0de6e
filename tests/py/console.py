"""The operator console in a real browser (Playwright driving Debian's
Chromium, never a downloaded browser).

  console.py CONFIG_JSON
  console.py replay CONFIG_JSON
  console.py shell SECRET_PREFIX SSH_ARGV...
  console.py oidc CONFIG_JSON
  console.py approve CONFIG_JSON

CONFIG_JSON names: base (https://127.0.0.1:PORT of the API listener),
chromium (the browser binary), psql (its path), agent_url (a psql URL as the
requesting agent), tokens {dba, viewer, self}, shots (a directory for
screenshots). The script runs psql itself so that it can watch the page
while a statement is held. Every step prints one JSON line; any failed
check raises (exit status 1) after a screenshot `failure.png`.

`replay` signs in with tokens.viewer, ends its one live session with
`kill_reason` if given, and plays the terminal of session `session` in the
page's player: the recording shows `expect`, never `secret`
(a masked value), with seek and speed. `shell` drives an interactive ssh
through a pseudo-terminal: it prints an email address assembled by printf
(so the typed line holds none), then exits with status 3. `oidc` signs in
through the OpenID provider's login page as `login` (issuer `issuer`) and
approves a held statement as that person. `approve` signs in with `token`,
checks the card of the held request matching `needle` shows each of
`expect`, and approves it with `reason`.
"""

import http.server
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Psql:
    """psql running one statement in the background."""

    def __init__(self, cfg, sql):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [cfg["psql"], "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", cfg["agent_url"], "-c", sql],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )

    def wait(self, timeout=30):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def running(self):
        return self.proc.poll() is None


def sign_in(page, base, token):
    page.goto(base + "/")
    page.wait_for_selector("#view-signin:not([hidden])")
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#view-approvals:not([hidden])")


def card_for(page, needle, state="pending", timeout=15000):
    sel = f"li.approval.{state}:has(pre.command:has-text({json.dumps(needle)}))"
    page.wait_for_selector(sel, timeout=timeout)
    return page.locator(sel).first


def csrf_of(ctx, base):
    r = ctx.request.get(base + "/console/session")
    check(r.status == 200, f"GET /console/session: {r.status}")
    return r.json()["csrf"]


def evil_server(target):
    """A cross-site page (http, another port) that posts a form to `target`."""
    page = (
        "<!doctype html><form method=POST enctype=text/plain action='" + target + "'>"
        "<input name='{\"reason\":\"' value='forged\"}'></form>"
        "<script>document.forms[0].submit()</script>"
    ).encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main():
    cfg = json.load(open(sys.argv[1]))
    base, shots, tokens = cfg["base"], cfg["shots"], cfg["tokens"]
    os.makedirs(shots, exist_ok=True)
    held = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=cfg["chromium"], args=CHROMIUM_ARGS)
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
        page = ctx.new_page()
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            # 1. Sign in with a pasted token; headers and cookie.
            resp = page.goto(base + "/")
            csp = resp.headers.get("content-security-policy", "")
            check("script-src 'self'" in csp and "unsafe-inline" not in csp, f"CSP: {csp}")
            check(page.url.endswith("/console/"), page.url)
            sign_in(page, base, tokens["dba"])
            cookies = [c for c in ctx.cookies() if c["name"] == "__Host-sluice_console"]
            check(len(cookies) == 1, f"cookies: {ctx.cookies()}")
            c = cookies[0]
            check(c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict", f"cookie: {c}")
            check(page.evaluate("document.cookie") == "", "the session cookie is readable by script")
            step("signed_in", csp=csp, cookie={k: c[k] for k in ("httpOnly", "secure", "sameSite")})

            # 2. A held statement appears without reload; approve it in the page.
            nav_count = page.evaluate("performance.getEntriesByType('navigation').length")
            q1 = Psql(cfg, "update customers set name = 'Approved Name' where id = 1 returning name")
            held.append(q1)
            card = card_for(page, "Approved Name")
            appeared = time.monotonic() - q1.started
            text = card.inner_text()
            for needle in ("agent-1", "appdb", "reviewed-customer-writes", "left", "agents", "Changes to customers",
                           "UPDATE", "writes customers"):
                check(needle in text, f"{needle!r} not in the card:\n{text}")
            check(page.evaluate("performance.getEntriesByType('navigation').length") == nav_count, "page reloaded")
            session_1 = card.locator("a[href^='#replay/']").first.inner_text()
            agent_token_id = card.locator("dd.mono").first.inner_text().strip()
            page.screenshot(path=os.path.join(shots, "approvals.png"), full_page=True)
            check(q1.running(), "psql finished before approval")
            card.locator("input[name=reason]").fill("ticket OPS-42")
            clicked = time.monotonic()
            card.locator("button.approve").click()
            rc, out, err = q1.wait(30)
            took = time.monotonic() - clicked
            check(rc == 0 and "Approved Name" in out, f"psql after approval: rc={rc} out={out} err={err}")
            check(took < 5, f"psql continued {took:.2f}s after the click")
            card_for(page, "Approved Name", state="approved")
            step("approved", appeared_after_s=round(appeared, 3), psql_done_after_click_s=round(took, 3), session=session_1)

            # 3. Hostile content renders as text; deny with a reason.
            hostile = ("update customers set name = '<script>window.__pwned=1</script>\"><img src=x onerror=\"window.__pwned=2\">' "
                       "where id = 2 /* <script>window.__pwned=3</script> \"><img src=x onerror=window.__pwned=4> <b>bold</b> */ returning id")
            q2 = Psql(cfg, hostile)
            held.append(q2)
            card = card_for(page, "window.__pwned=1")
            session_2 = card.locator("a[href^='#replay/']").first.inner_text()
            text = card.locator("pre.command").first.inner_text()
            check("<script>window.__pwned=1</script>" in text and "<b>bold</b>" in text and "onerror=window.__pwned=4" in text,
                  f"the command is not shown as text: {text}")
            check(page.locator("li.approval img, li.approval script, li.approval b").count() == 0, "HTML from the command became elements")
            page.screenshot(path=os.path.join(shots, "hostile.png"), full_page=True)
            card.locator("input[name=reason]").fill("not on a Friday <i>sorry</i>")
            card.locator("button.deny").click()
            rc, out, err = q2.wait(30)
            check(rc != 0 and "not on a Friday <i>sorry</i>" in err, f"psql after denial: rc={rc} err={err}")
            card_for(page, "window.__pwned=1", state="denied")
            check(page.evaluate("window.__pwned === undefined"), "a script from the command ran")
            csp_errors = [m for m in problems if "Content Security Policy" in m or "pwned" in m]
            check(not csp_errors, f"the page tried to run injected content: {csp_errors}")
            step("hostile_denied", psql_stderr=err.strip())

            # 4. A forged cross-site POST is refused; the request stays pending.
            q3 = Psql(cfg, "update customers set name = 'Forged' where id = 3 returning name")
            held.append(q3)
            card = card_for(page, "'Forged'")
            approval_id = card.get_attribute("data-id")
            target = base + "/api/v1/approvals/" + approval_id + "/approve"
            srv = evil_server(target)
            evil = ctx.new_page()
            with evil.expect_response(lambda r: r.url == target) as info:
                evil.goto(f"http://127.0.0.1:{srv.server_port}/")
            forged_form = info.value.status
            evil.close()
            srv.shutdown()
            check(forged_form in (401, 403), f"the forged form post got {forged_form}")
            # The same browser's cookies, sent from a script that does not have the CSRF token.
            r = ctx.request.post(target, headers={"origin": "https://evil.example", "content-type": "application/json"}, data="{}")
            check(r.status == 403, f"cross-origin POST with the cookie: {r.status} {r.text()}")
            r = ctx.request.post(target, headers={"origin": base, "content-type": "application/json"}, data="{}")
            check(r.status == 403, f"same-origin POST without the CSRF header: {r.status} {r.text()}")
            r = ctx.request.post(target, headers={"origin": "https://evil.example", "content-type": "application/json",
                                                 "x-sluice-csrf": csrf_of(ctx, base)}, data="{}")
            check(r.status == 403, f"cross-origin POST with the CSRF header: {r.status} {r.text()}")
            time.sleep(0.5)
            check(q3.running() and card.get_attribute("class").split()[-1] == "pending", "the forged request changed the approval")
            step("forgery_refused", form_status=forged_form)

            # 5. A viewer outside the approver groups: no button, and the API refuses.
            vctx = browser.new_context(ignore_https_errors=True, viewport={"width": 420, "height": 900})
            vpage = vctx.new_page()
            sign_in(vpage, base, tokens["viewer"])
            time.sleep(1.0)
            check(vpage.locator("button.approve").count() == 0, "a non-approver sees an approve button")
            r = vctx.request.post(target, headers={"origin": base, "content-type": "application/json",
                                                  "x-sluice-csrf": csrf_of(vctx, base)}, data="{}")
            check(r.status == 403 and "not in an approver group" in r.text(), f"non-approver POST: {r.status} {r.text()}")
            # The requester (also a dba) sees its own request without a button; the API refuses it too.
            sctx = browser.new_context(ignore_https_errors=True)
            spage = sctx.new_page()
            sign_in(spage, base, tokens["self"])
            own = card_for(spage, "'Forged'")
            check(own.locator("button.approve").count() == 0 and "Your own request" in own.inner_text(), "the requester may approve")
            r = sctx.request.post(target, headers={"origin": base, "content-type": "application/json",
                                                  "x-sluice-csrf": csrf_of(sctx, base)}, data="{}")
            check(r.status == 403 and "own request" in r.text(), f"self-approval POST: {r.status} {r.text()}")
            # A ready client command with a fresh token narrowed to the connection; it works.
            spage.goto(base + "/console/#connections")
            conn = spage.locator("#connections-list li.card").first
            conn.wait_for()
            check("appdb" in conn.inner_text() and "$SLUICE_TOKEN" in conn.inner_text(), conn.inner_text())
            conn.locator("button").click()
            spage.wait_for_function("() => document.querySelector('#connections-list pre').textContent.startsWith('PGPASSWORD=\"ey')")
            command = conn.locator("pre").inner_text()
            # PGPASSWORD="TOKEN" psql "postgresql://SUBJECT@HOST:PORT/CONNECTION": the
            # token is in the environment, not in psql's arguments.
            _, token, _, url, _ = command.split('"')
            check(token not in url and url.startswith("postgresql://agent-1@"), command.replace(token, "TOKEN"))
            # Run as pasted into a shell, not re-assembled here.
            ready = subprocess.run(["bash", "-c", command.replace("psql ", shlex.quote(cfg["psql"]) + " -X -A -t -c 'select 42' ", 1)],
                                   capture_output=True, text=True, timeout=60)
            check(ready.returncode == 0 and ready.stdout.strip() == "42", f"the copied command: {ready.stderr}")
            url = url.replace("postgresql://agent-1@", "postgresql://agent-1:" + token + "@", 1)
            step("client_command", command=command.replace(token, "TOKEN"))
            # A statement held on the exchanged token shows its lineage to the approver.
            q5 = Psql({**cfg, "agent_url": url}, "update customers set name = 'Exchanged' where id = 5 returning name")
            held.append(q5)
            card5 = card_for(page, "'Exchanged'")
            check("exchanged from" in card5.locator("dd.mono").first.inner_text(), card5.inner_text())
            card5.locator("input[name=reason]").fill("lineage seen")
            card5.locator("button.deny").click()
            rc, _, err = q5.wait(30)
            check(rc != 0 and "lineage seen" in err, f"psql 5: {err}")
            sctx.close()
            card.locator("input[name=reason]").fill("forgery test")
            card.locator("button.deny").click()
            rc, _, err = q3.wait(30)
            check(rc != 0 and "forgery test" in err, f"psql 3: {err}")
            step("non_approvers_refused")

            # 6. Kill a live session from the sessions page (the viewer is an admin).
            vpage.goto(base + "/console/#sessions")
            # The earlier clients' sessions are gone before this one starts.
            vpage.wait_for_selector("#live-empty:not([hidden])", timeout=15000)
            q4 = Psql(cfg, "select pg_sleep(60)")
            held.append(q4)
            vpage.wait_for_selector("#live-list li.live-session", timeout=15000)
            row = vpage.locator("#live-list li.live-session").first
            row.locator("input").fill("maintenance")
            vpage.screenshot(path=os.path.join(shots, "sessions.png"), full_page=True)
            clicked = time.monotonic()
            row.locator("button.kill").click()
            rc, _, err = q4.wait(30)
            took = time.monotonic() - clicked
            check(rc != 0 and "maintenance" in err and "ended by" in err, f"psql after kill: rc={rc} {err}")
            check(took < 5, f"the session ended {took:.2f}s after the click")
            vpage.wait_for_selector("#live-empty:not([hidden])", timeout=10000)
            step("killed", psql_stderr=err.strip(), after_s=round(took, 3))

            # 7. History and a replay timeline of the approved session.
            vpage.goto(base + "/console/#sessions")
            vpage.wait_for_selector("#history tbody tr td a")
            vpage.select_option("select[name=decision]", "held")
            vpage.click("#filters button[type=submit]")
            vpage.wait_for_function("() => document.querySelectorAll('#history tbody tr td a').length === 4")
            vpage.goto(base + "/console/#replay/" + session_1)
            vpage.wait_for_selector("#timeline li[data-event=approval_decided]")
            timeline = vpage.locator("#timeline").inner_text()
            check("approved" in timeline and "ticket OPS-42" in timeline and "Approved Name" in timeline, timeline)
            vpage.set_viewport_size({"width": 1100, "height": 900})
            vpage.screenshot(path=os.path.join(shots, "replay.png"), full_page=True)
            # The hostile statement's timeline shows it as text too.
            vpage.goto(base + "/console/#replay/" + session_2)
            vpage.wait_for_selector("#timeline li[data-event=approval_decided]")
            timeline = vpage.locator("#timeline").inner_text()
            check("<script>window.__pwned=1</script>" in timeline and "<i>sorry</i>" in timeline, timeline)
            check(vpage.locator("#timeline img, #timeline script, #timeline b, #timeline i").count() == 0,
                  "HTML from the session became elements in the timeline")
            check(vpage.evaluate("window.__pwned === undefined"), "a script from the timeline ran")
            step("replay")

            # 8. Audit status, revoking the agent's token by id, sign-out.
            vpage.goto(base + "/console/#audit")
            vpage.wait_for_selector("#audit-status .badge")
            audit = vpage.locator("#audit-status").inner_text()
            check("intact" in audit and "latest checkpoint" in audit and "signed" in audit, audit)
            vpage.fill("#revoke-form input[name=token_id]", agent_token_id)
            vpage.fill("#revoke-form input[name=reason]", "leaked in a log")
            vpage.click("#revoke-form button[type=submit]")
            vpage.wait_for_function("() => document.querySelector('#revoke-result').textContent.startsWith('Revoked')")
            refused = subprocess.run([cfg["psql"], "-X", "-A", "-t", "-d", cfg["agent_url"], "-c", "select 1"],
                                     capture_output=True, text=True, timeout=60)
            check(refused.returncode != 0 and "revoked" in refused.stderr, f"after revoke: {refused.stderr}")
            vpage.screenshot(path=os.path.join(shots, "audit.png"), full_page=True)
            # Revoking by presenting a token ends the console session opened with it:
            # the approver's open page falls back to sign-in within seconds.
            vpage.fill("#revoke-form input[name=token]", tokens["dba"])
            vpage.click("#revoke-form button[type=submit]")
            vpage.wait_for_function("() => document.querySelector('#revoke-result').textContent.startsWith('Revoked')")
            page.wait_for_selector("#view-signin:not([hidden])", timeout=10000)
            check("revoked" in page.locator("#signin-error").inner_text(), page.locator("#signin-error").inner_text())
            step("revoked", token_id=agent_token_id, approver_page=page.locator("#signin-error").inner_text())
            vpage.click("#signout")
            vpage.wait_for_selector("#view-signin:not([hidden])")
            r = vctx.request.get(base + "/console/session")
            check(r.status == 401, f"after sign-out: {r.status}")
            vctx.close()
            check(page.evaluate("window.__pwned === undefined"), "a script from the command ran")
            step("done", shots=shots)
        except Exception:
            try:
                page.screenshot(path=os.path.join(shots, "failure.png"), full_page=True)
            except Exception:
                pass
            print("browser console:", problems, file=sys.stderr)
            raise
        finally:
            for q in held:
                if q.running():
                    q.proc.kill()
            browser.close()


def replay():
    cfg = json.load(open(sys.argv[2]))
    base, shots = cfg["base"], cfg["shots"]
    os.makedirs(shots, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=cfg["chromium"], args=CHROMIUM_ARGS)
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
        page = ctx.new_page()
        try:
            sign_in(page, base, cfg["tokens"]["viewer"])
            if cfg.get("kill_reason"):
                # The owner ends its own live session from the sessions page.
                page.goto(base + "/console/#sessions")
                page.wait_for_selector("#live-list li.live-session", timeout=15000)
                check(page.locator("#live-list li.live-session").count() == 1, "one live session expected")
                row = page.locator("#live-list li.live-session").first
                row.locator("input").fill(cfg["kill_reason"])
                row.locator("button.kill").click()
                page.wait_for_selector("#live-empty:not([hidden])", timeout=10000)
                step("killed")
            page.goto(base + "/console/#replay/" + cfg["session"])
            page.wait_for_selector("#player .term")
            term = page.locator("#player .term")
            end = term.inner_text()
            check(cfg["expect"] in end, f"the player's end state lacks {cfg['expect']!r}: {end!r}")
            check(cfg["secret"] not in page.content(), "the masked value is in the page")
            timeline = page.locator("#timeline").inner_text()
            check("shell" in timeline and "masked" in timeline, timeline)
            # Seek to the start: nothing shown yet; play at 8x: the output comes back.
            page.eval_on_selector("#player input[type=range]",
                                  "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
            check(cfg["expect"] not in term.inner_text(), "seek to 0 still shows the output")
            page.select_option("#player select", "8")
            page.click("#player button.play")
            page.wait_for_function(
                "([sel, want]) => document.querySelector(sel).textContent.includes(want)",
                arg=["#player .term", cfg["expect"]], timeout=30000)
            check(cfg["secret"] not in term.inner_text(), "the masked value appeared while playing")
            page.screenshot(path=os.path.join(shots, "replay-ssh.png"), full_page=True)
            step("replayed", screen=term.inner_text())
        except Exception:
            page.screenshot(path=os.path.join(shots, "failure-replay.png"), full_page=True)
            raise
        finally:
            browser.close()


def oidc():
    """Signs in through the identity provider's own pages (code + PKCE), then
    approves a held psql statement as that person."""
    cfg = json.load(open(sys.argv[2]))
    base, shots = cfg["base"], cfg["shots"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=cfg["chromium"], args=CHROMIUM_ARGS)
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
        page = ctx.new_page()
        held = []
        try:
            page.goto(base + "/")
            page.wait_for_selector("#oidc-providers a")
            link = page.locator("#oidc-providers a").first
            check(cfg["issuer"] in link.inner_text(), link.inner_text())
            link.click()
            # The provider's development login page.
            page.wait_for_selector("input[name=login]")
            check(page.url.startswith(cfg["issuer"]), page.url)
            page.fill("input[name=login]", cfg["login"])
            page.fill("input[name=password]", "any")
            page.click("button[type=submit]")
            page.wait_for_selector("#view-approvals:not([hidden])", timeout=20000)
            who = page.locator("#whoami").inner_text()
            check(who.startswith(cfg["login"] + " (") and "dba" in who, who)
            cookies = {c["name"]: c for c in ctx.cookies()}
            c = cookies.get("__Host-sluice_console")
            check(c and c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict", f"cookies: {cookies}")
            check("__Host-sluice_oidc" not in cookies, f"the state cookie stayed: {cookies}")
            step("oidc_signed_in", whoami=who)
            q = Psql(cfg, "update customers set name = 'By Alice' where id = 4 returning name")
            held.append(q)
            card = card_for(page, "By Alice")
            card.locator("input[name=reason]").fill("checked by alice")
            card.locator("button.approve").click()
            rc, out, err = q.wait(30)
            check(rc == 0 and "By Alice" in out, f"psql: rc={rc} out={out} err={err}")
            page.screenshot(path=os.path.join(shots, "oidc-approved.png"), full_page=True)
            page.click("#signout")
            page.wait_for_selector("#view-signin:not([hidden])")
            step("oidc_approved")
        except Exception:
            page.screenshot(path=os.path.join(shots, "failure-oidc.png"), full_page=True)
            raise
        finally:
            for q in held:
                if q.running():
                    q.proc.kill()
            browser.close()


def approve():
    """Signs in, waits for the held request whose command contains `needle`,
    checks the card shows each of `expect`, approves it with `reason`."""
    cfg = json.load(open(sys.argv[2]))
    base, shots = cfg["base"], cfg["shots"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=cfg["chromium"], args=CHROMIUM_ARGS)
        page = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900}).new_page()
        try:
            sign_in(page, base, cfg["token"])
            card = card_for(page, cfg["needle"], timeout=30000)
            text = card.inner_text()
            for want in cfg["expect"]:
                check(want in text, f"{want!r} not in the card:\n{text}")
            page.screenshot(path=os.path.join(shots, cfg["shot"]), full_page=True)
            card.locator("input[name=reason]").fill(cfg["reason"])
            card.locator("button.approve").click()
            card_for(page, cfg["needle"], state="approved")
            step("approved", card=text)
        except Exception:
            page.screenshot(path=os.path.join(shots, "failure-approve.png"), full_page=True)
            raise
        finally:
            browser.close()


def shell():
    import pty
    import select
    prefix, argv = sys.argv[2], sys.argv[3:]
    import fcntl
    import struct
    import termios
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 16, 90, 0, 0))
    buf = b""

    def read_until(marker, timeout=30):
        nonlocal buf
        end = time.time() + timeout
        while marker not in buf and time.time() < end:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                buf += data
        check(marker in buf, f"timed out waiting for {marker!r}: {buf!r}")

    # The typed line reads own''er, so only the output has "owner ".
    os.write(fd, ("printf 'own''er %s%%sexample.com\\n' @\r" % prefix).encode())
    read_until(b"owner ")
    time.sleep(0.3)
    os.write(fd, b"exit 3\r")
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(buf.decode("utf-8", "replace"))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    if sys.argv[1] == "replay":
        replay()
    elif sys.argv[1] == "shell":
        shell()
    elif sys.argv[1] == "oidc":
        oidc()
    elif sys.argv[1] == "approve":
        approve()
    else:
        main()
