"""Types at an interactive ssh session through a real pseudo-terminal: a
command (echoed), then a secret at a prompt with the terminal's echo off.

Usage: ssh_pty_typed.py SECRET SSH_ARGV...  Exits with the shell's status
(3); prints everything the terminal showed.
"""
import os
import pty
import select
import sys
import time

secret = sys.argv[1].encode()
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)

buf = b""


def read_until(marker, timeout=30):
    global buf
    end = time.time() + timeout
    while marker not in buf:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            buf += data
        if time.time() > end:
            sys.stderr.write("timed out waiting for %r; screen so far: %r\n" % (marker, buf))
            sys.exit(4)


os.write(fd, b"echo typed-$((2*3))\r")
read_until(b"typed-6\r\n")
# The prompt is printed only once echo is off, so the secret is typed then.
os.write(fd, b"stty -echo; printf 'p%s> ' w; read -r pw; stty echo; echo; echo got-${#pw}\r")
read_until(b"pw> ")
os.write(fd, secret + b"\r")
read_until(b"got-%d" % len(secret))
os.write(fd, b"exit 3\r")
_, status = os.waitpid(pid, 0)
sys.stdout.write(buf.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
