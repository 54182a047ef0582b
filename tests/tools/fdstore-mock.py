#!/usr/bin/env python3
"""MOCK of systemd's file-descriptor store, for tests only: systemd cannot
run as PID 1 here. It plays the part of a unit with Restart=on-failure and
FileDescriptorStoreMax=2: it runs COMMAND with NOTIFY_SOCKET set, keeps the
descriptors the command sends with FDSTORE=1 (by FDNAME), and when the
command dies without being asked to, starts it again with them, as systemd
does: LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, the descriptors from 3 on.

  fdstore-mock.py DIR COMMAND...
DIR/pid holds the running command's pid, DIR/starts how many times it was
started, DIR/stored the names of the descriptors held. SIGTERM: the command
gets SIGTERM (a stop: no restart), then this exits with its status.
"""
import array
import os
import signal
import socket
import sys
import time

folder, cmd = sys.argv[1], sys.argv[2:]
sock_path = os.path.join(folder, "notify.sock")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(sock_path)
notify.setblocking(False)
stored = {}  # FDNAME -> fd
stopping = False
starts = 0


def on_term(signum, frame):
    global stopping
    stopping = True
    if child:
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass


def start():
    global starts
    names = list(stored)
    pid = os.fork()
    if pid == 0:
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        env.pop("LISTEN_FDS", None)
        if names:
            for i, name in enumerate(names):
                os.dup2(stored[name], 3 + i, inheritable=True)
            env.update(LISTEN_FDS=str(len(names)), LISTEN_FDNAMES=":".join(names),
                       LISTEN_PID=str(os.getpid()))
        os.execvpe(cmd[0], cmd, env)
    starts += 1
    open(os.path.join(folder, "pid.tmp"), "w").write("%d\n" % pid)
    os.rename(os.path.join(folder, "pid.tmp"), os.path.join(folder, "pid"))
    open(os.path.join(folder, "starts"), "w").write("%d\n" % starts)
    return pid


def receive():
    while True:
        try:
            msg, anc, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
        except BlockingIOError:
            return
        fds = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        fields = dict(l.split("=", 1) for l in msg.decode().split("\n") if "=" in l)
        if fields.get("FDSTORE") == "1" and fds:
            name = fields.get("FDNAME", "stored")
            if name in stored:
                os.close(stored[name])
            stored[name] = fds[0]
            for extra in fds[1:]:
                os.close(extra)
            open(os.path.join(folder, "stored"), "w").write(" ".join(sorted(stored)) + "\n")
        else:
            for fd in fds:
                os.close(fd)


signal.signal(signal.SIGTERM, on_term)
child = 0
child = start()
while True:
    receive()
    pid, status = os.waitpid(child, os.WNOHANG)
    if pid == 0:
        time.sleep(0.02)
        continue
    receive()
    if stopping or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
    child = start()
