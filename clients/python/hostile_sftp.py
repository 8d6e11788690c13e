#!/usr/bin/env python3
"""Issue 14: hostile SFTP clients, as raw SFTP packets over paramiko channels.

Run by crates/ferry-cli/tests/sftp_hostile.rs with FERRY_SFTP_PORT,
FERRY_SFTP_USER and FERRY_SFTP_PASSWORD. Each mode prints one JSON line per
step on stdout; the Rust test checks the server between steps.

handles CONNECTIONS CHANNELS OPENS PATH
    On every channel (SFTP session), OPENS opens of PATH sent at once
    (pipelined), then all answers read: what was opened, what was refused
    and why. Prints {"step": "held", ...} and keeps every handle open until
    a line arrives on stdin; then closes the first channel's handles and
    opens again on the last channel (which got none): the user's budget
    came back. Prints {"step": "reopened", ...}.

pipeline CHANNELS PATH GIVE_UP_SECS
    On every channel, opens PATH and sends READ requests of 32 KiB without
    end, never reading an answer. Prints {"step": "stalled", ...} once no
    sender has made progress for 2 s (the server stopped reading), then
    waits (at most GIVE_UP_SECS) for the server to close the channels and
    prints {"step": "cut", ...}.
"""
import json
import os
import struct
import sys
import threading
import time

import paramiko

PORT = int(os.environ["FERRY_SFTP_PORT"])
USER = os.environ["FERRY_SFTP_USER"]
PASSWORD = os.environ["FERRY_SFTP_PASSWORD"]

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ = 1, 2, 3, 4, 5
FXP_STATUS, FXP_HANDLE = 101, 102
FXF_READ = 1


def packet(kind, payload):
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def string(b):
    return struct.pack(">I", len(b)) + b


def open_req(rid, path):
    return packet(FXP_OPEN, struct.pack(">I", rid) + string(path) + struct.pack(">II", FXF_READ, 0))


def close_req(rid, handle):
    return packet(FXP_CLOSE, struct.pack(">I", rid) + string(handle))


def read_req(rid, handle, offset, length):
    return packet(FXP_READ, struct.pack(">I", rid) + string(handle) + struct.pack(">QI", offset, length))


def say(**fields):
    print(json.dumps(fields), flush=True)


def connect():
    t = paramiko.Transport(("127.0.0.1", PORT))
    t.connect(username=USER, password=PASSWORD)
    return t


class Raw:
    """One SFTP session on its own channel, spoken byte by byte."""

    def __init__(self, transport):
        self.chan = transport.open_session()
        self.chan.invoke_subsystem("sftp")
        self.chan.sendall(packet(FXP_INIT, struct.pack(">I", 3)))
        kind, _ = self.recv()
        assert kind == FXP_VERSION, kind

    def recv_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.chan.recv(n - len(out))
            if not chunk:
                raise EOFError("channel closed")
            out += chunk
        return out

    def recv(self):
        (length,) = struct.unpack(">I", self.recv_exact(4))
        body = self.recv_exact(length)
        return body[0], body[1:]

    def answers(self, count):
        """`count` answers: (handles, {status message: count})."""
        handles, refused = [], {}
        for _ in range(count):
            kind, body = self.recv()
            if kind == FXP_HANDLE:
                (n,) = struct.unpack(">I", body[4:8])
                handles.append(body[8:8 + n])
            elif kind == FXP_STATUS:
                code, n = struct.unpack(">II", body[4:12])
                message = body[12:12 + n].decode("utf-8", "replace")
                key = f"{code}: {message}"
                refused[key] = refused.get(key, 0) + 1
            else:
                raise AssertionError(f"unexpected answer {kind}")
        return handles, refused

    def open_many(self, path, count):
        self.chan.sendall(b"".join(open_req(i + 1, path) for i in range(count)))
        return self.answers(count)

    def close_all(self, handles):
        self.chan.sendall(b"".join(close_req(i + 1, h) for i, h in enumerate(handles)))
        return self.answers(len(handles))

    def closed(self):
        return self.chan.closed or self.chan.eof_received or self.chan.exit_status_ready()


def handles_mode(connections, channels, opens, path):
    transports = [connect() for _ in range(connections)]
    sessions = [Raw(t) for t in transports for _ in range(channels)]
    per_session, refused = [], {}
    held = []
    for s in sessions:
        got, why = s.open_many(path, opens)
        held.append(got)
        per_session.append(len(got))
        for k, v in why.items():
            refused[k] = refused.get(k, 0) + v
    say(step="held", opened=sum(per_session), per_session=per_session, refused=refused)
    sys.stdin.readline()
    _, errors = sessions[0].close_all(held[0])
    assert list(errors) == ["0: "], errors
    got, why = sessions[-1].open_many(path, 10)
    say(step="reopened", opened=len(got), refused=why)
    for t in transports:
        t.close()


def pipeline_mode(channels, path, give_up):
    transport = connect()
    sessions = [Raw(transport) for _ in range(channels)]
    handles = []
    for s in sessions:
        got, why = s.open_many(path, 1)
        assert len(got) == 1, why
        handles.append(got[0])
    sent = [0] * channels
    stop = threading.Event()

    def flood(i):
        s, h, rid = sessions[i], handles[i], 100
        try:
            while not stop.is_set():
                batch = b"".join(read_req(rid + k, h, ((rid + k) % 64) * 32768, 32768) for k in range(64))
                s.chan.sendall(batch)
                rid += 64
                sent[i] += 64
        except Exception:  # noqa: BLE001 - the server cut the channel: the point
            pass

    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(channels)]
    for th in threads:
        th.start()
    last, still_since, began = None, time.monotonic(), time.monotonic()
    while time.monotonic() - began < give_up:
        now = list(sent)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 2:
            break
        time.sleep(0.1)
    say(step="stalled", sent=list(sent), secs=round(time.monotonic() - began, 1))
    began = time.monotonic()
    while time.monotonic() - began < give_up and not all(s.closed() for s in sessions):
        time.sleep(0.1)
    stop.set()
    say(step="cut", closed=[s.closed() for s in sessions], after=round(time.monotonic() - began, 1))
    transport.close()


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "handles":
        handles_mode(int(args[0]), int(args[1]), int(args[2]), args[3].encode())
    elif mode == "pipeline":
        pipeline_mode(int(args[0]), args[1].encode(), float(args[2]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
