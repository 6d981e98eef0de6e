"""Drives an interactive ssh session through a real pseudo-terminal.

Usage: ssh_pty.py SSH_ARGV...  Types a command, resizes the terminal
(40x120 -> 50x132, which sends SIGWINCH), checks `stty size` sees the new
size through the gateway, exits, and prints everything the terminal showed.
"""
import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time

argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)


def set_size(rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


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
            sys.exit(3)


set_size(40, 120)
os.write(fd, b"echo hello-$((6*7))\r")
read_until(b"hello-42")
set_size(50, 132)
time.sleep(0.5)
os.write(fd, b"stty size\r")
read_until(b"50 132")
os.write(fd, b"exit 3\r")
_, status = os.waitpid(pid, 0)
try:
    while True:
        r, _, _ = select.select([fd], [], [], 0.2)
        if not r:
            break
        data = os.read(fd, 4096)
        if not data:
            break
        buf += data
except OSError:
    pass
sys.stdout.write(buf.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
