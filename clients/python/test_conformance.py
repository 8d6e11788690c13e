#!/usr/bin/env python3
"""Conformance: every error code docs/PROTOCOL.md lists, driven against the real server.

    python3 clients/python/test_conformance.py --ferry target/debug/ferry [-v]

Reads the "Errors" table and the "Errors by operation" table of
docs/PROTOCOL.md, starts `ferry serve --insecure-plaintext` (three times,
each on 127.0.0.1:0 with a throwaway data folder: the main one, one with a
small header cap and quick login throttling, one with a connection limit of
one and a short login timeout), provokes each documented (operation, code)
pair with the standard-library client and checks the code it gets. A
documented pair that is neither checked nor listed in SKIPPED (with its
reason) fails the run, and so does a check of a pair the document does not
list: the document and the server must agree both ways. Exits 0 when every
check passed.
"""
import argparse, hashlib, os, re, shutil, signal, socket, struct, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ferry_client import Ferry, FerryError  # noqa: E402
from test_ferry_client import Server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOCOL = os.path.join(ROOT, "docs", "PROTOCOL.md")
PASSWORD = "conformance pw"

# Documented codes no client can provoke in a test, with the reason.
SKIPPED = {
    ("every request", "internal"): "a server-side failure (an I/O error of the server's own disk, a lost task); "
                         "no request makes a healthy server produce it",
    ("exec", "internal"): "the server cannot create pipes or run a program it found: not provokable",
}

FAILURES, CHECKED = [], set()
VERBOSE = False


def check(cond, what):
    if cond:
        if VERBOSE:
            print(f"  ok   {what}")
    else:
        print(f"  FAIL {what}")
        FAILURES.append(what)


# -- the document ------------------------------------------------------------

def section(text, title):
    """The text of the section whose heading line is exactly `title`, up to the next heading of its level or above."""
    level = title.split(" ", 1)[0]
    start = text.index("\n" + title + "\n")
    rest = text[start + len(title) + 2:]
    stop = re.search(r"^#{1,%d} " % len(level), rest, re.M)
    return rest[:stop.start()] if stop else rest


def documented():
    """(codes of the Errors table, {(row, code)} of the Errors by operation table)."""
    text = open(PROTOCOL, encoding="utf-8").read()
    errors = section(text, "## Errors")
    codes = re.findall(r"^\| `([a-z_]+)` \|", errors.split("### ")[0], re.M)
    pairs = set()
    for line in section(text, "### Errors by operation").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not line.startswith("|") or cells[0].startswith("---") or cells[0] == "request":
            continue
        # A row names operations in backticks, or a group in parentheses: "(every path)".
        rows = re.findall(r"`([a-z_]+)`", cells[0]) or [re.sub(r"[()]", "", cells[0]).split(",")[0].strip()]
        for row in rows:
            for code in re.findall(r"`([a-z_]+)`", cells[1]):
                pairs.add((row, code))
    return codes, pairs


# -- provoking ---------------------------------------------------------------

def expect(row, code, what, fn):
    """Runs `fn`, which must fail with `code`; records (row, code) as checked."""
    CHECKED.add((row, code))
    try:
        fn()
    except FerryError as e:
        check(e.code == code, f"{row}: {what}: got {e.code} ({e.message}), expected {code}")
        return
    except OSError as e:
        check(False, f"{row}: {what}: connection error {e!r}, expected {code}")
        return
    check(False, f"{row}: {what}: succeeded, expected {code}")


def session_error(row, code, what, c, within=30):
    """Reads the next frame from `c`: an error with id 0 and `code`, after which the server closes."""
    CHECKED.add((row, code))
    c.sock.settimeout(within)
    try:
        h = c.recv()
    except OSError as e:
        check(False, f"{row}: {what}: no frame ({e!r}), expected {code} with id 0")
        return
    got = (h.get("id"), (h.get("error") or {}).get("code"))
    check(got == (0, code), f"{row}: {what}: got id {got[0]} code {got[1]}, expected id 0 code {code}")
    try:
        check(c.sock.recv(1) == b"", f"{row}: {what}: the connection closes after {code}")
    except OSError:
        pass


def put_raw(c, path, data, **fields):
    """A put without `wait`: header, body and put_end; returns the answer."""
    digest = fields.pop("end_sha256", None) or hashlib.sha256(data).hexdigest()
    size = fields.pop("size", len(data))
    rid = c.request("put", body_len=len(data), path=path, size=size, **fields)
    c.sock.sendall(data)
    c.send({"op": "put_end", "id": rid, "sha256": digest})
    return c.answer(rid)


def login(port, user="alice"):
    c = Ferry("127.0.0.1", port, plaintext=True, timeout=60)
    c.login(user, PASSWORD)
    return c


def sha(data):
    return hashlib.sha256(data).hexdigest()


PATH_OPS = {
    "cd": lambda c, p: c.call("cd", path=p),
    "ls": lambda c, p: c.ls(p),
    "stat": lambda c, p: c.call("stat", path=p),
    "mkdir": lambda c, p: c.call("mkdir", path=p, parents=True),
    "rm": lambda c, p: c.call("rm", path=p, recursive=True),
    "rmdir": lambda c, p: c.call("rmdir", path=p),
    "mv": lambda c, p: c.call("mv", **{"from": p, "to": "/mv-target"}),
    "hash": lambda c, p: c.call("hash", path=p),
    "upload_status": lambda c, p: c.call("upload_status", path=p, size=5),
    "put": lambda c, p: put_raw(c, p, b"hello"),
    "get": lambda c, p: c.call("get", path=p),
}


def main_server(port, home, work):
    """Everything the main server (unlimited alice with exec, bob with a small quota) can show."""
    c = login(port)
    c.mkdir("/d")
    put_raw(c, "/d/f.txt", b"hello")
    c.mkdir("/d/sub")
    put_raw(c, "/d/sub/x", b"x")
    c.mkdir("/e")

    # Any request.
    expect("every request", "bad_request", "mkdir without `path`", lambda: c.call("mkdir"))
    expect("every request", "bad_request", "`path` of the wrong type", lambda: c.call("stat", path=7))
    expect("every request", "unknown_op", "op `frobnicate`", lambda: c.call("frobnicate"))

    def body_on_pwd():
        rid = c.request("pwd", body_len=3)
        c.sock.sendall(b"abc")
        c.answer(rid)
    expect("every request", "bad_request", "a body on pwd", body_on_pwd)
    check(c.call("pwd")["path"] == "/", "every request: the session goes on after a body where none belongs")

    def id_zero():
        c.send({"op": "pwd", "id": 0})
        h = c.recv()
        check(h.get("id") == 0, "any: id 0 is answered with id 0")
        raise FerryError((h.get("error") or {}).get("code", "ok"), "id 0")
    expect("every request", "bad_request", "a request with id 0", id_zero)

    def no_id():
        c.send({"op": "pwd"})
        h = c.recv()
        check(h.get("id") == 0, "any: a request without id is answered with id 0")
        raise FerryError((h.get("error") or {}).get("code", "ok"), "no id")
    expect("every request", "bad_request", "a request without id", no_id)
    check(c.call("pwd")["path"] == "/", "every request: the session goes on after id 0")

    fresh = Ferry("127.0.0.1", port, plaintext=True, timeout=60)
    expect("every request", "auth_required", "ls after hello, before login", lambda: fresh.ls("/"))
    expect("hello", "bad_request", "hello after login", lambda: c.call("hello", version=1))
    fresh.sock.close()

    # Names: a raw control character is invalid, its escaped form addresses a name.
    for name, what in [("a\0b", "NUL"), ("a\nb", "raw newline"), ("a\x1bb", "raw ESC"),
                       ("a\\qb", "a backslash that starts no escape"), ("a\\x4", "a cut \\xHH"),
                       (".ferry-partial", "reserved .ferry name"), ("n" * 256, "a name of 256 bytes"),
                       ("a/" * 2100, "a path of 4200 bytes")]:
        for op, fn in PATH_OPS.items():
            expect("every path", "invalid_name", f"{op} of {what}", lambda fn=fn, name=name: fn(c, name))
    c.mkdir("/tab\\x09dir")
    names = [e["name"] for e in c.ls("/")]
    check("tab\\x09dir" in names, f"names: a tab is listed escaped ({names})")
    check(os.path.isdir(os.path.join(home, "alice", "tab\tdir")), "names: \\x09 is one byte on disk")
    c.mkdir("/back\\\\slash")
    check(os.path.isdir(os.path.join(home, "alice", "back\\slash")), "names: \\\\ is one backslash on disk")
    check(c.call("stat", path="/back\\\\slash")["entry"]["kind"] == "dir", "names: stat of an escaped name")

    for op, fn in PATH_OPS.items():
        expect("every path", "outside_home", f"{op} of ../..", lambda fn=fn: fn(c, "../.."))
    for op, fn in PATH_OPS.items():
        if op not in ("mkdir", "upload_status"):
            expect(op, "not_a_directory", f"{op} below a file", lambda fn=fn: fn(c, "/d/f.txt/x"))
    expect("mkdir", "not_a_directory", "mkdir -p below a file", lambda: c.call("mkdir", path="/d/f.txt/x", parents=True))
    for op, fn in PATH_OPS.items():
        if op not in ("mkdir", "upload_status"):
            expect(op, "not_found", f"{op} below a missing folder", lambda fn=fn: fn(c, "/nope/x"))

    # cd, ls, stat.
    expect("cd", "not_found", "cd /nope", lambda: c.call("cd", path="/nope"))
    expect("cd", "not_a_directory", "cd to a file", lambda: c.call("cd", path="/d/f.txt"))
    expect("ls", "not_found", "ls /nope", lambda: c.ls("/nope"))
    check([e["name"] for e in c.ls("/d/f.txt")] == ["f.txt"], "ls: a file lists itself")
    expect("stat", "not_found", "stat /nope", lambda: c.call("stat", path="/nope"))
    c.call("cd", path="/d")
    cwd = c.call("stat", path="")["entry"]
    check(cwd["kind"] == "dir" and cwd["name"] == "d", f"stat \"\": the current directory ({cwd})")
    c.call("cd", path="/")

    # mkdir.
    expect("mkdir", "already_exists", "mkdir of an existing folder", lambda: c.call("mkdir", path="/d"))
    expect("mkdir", "already_exists", "mkdir of an existing file", lambda: c.call("mkdir", path="/d/f.txt"))
    expect("mkdir", "already_exists", "mkdir -p of an existing file",
           lambda: c.call("mkdir", path="/d/f.txt", parents=True))
    expect("mkdir", "not_found", "mkdir without -p below a missing folder", lambda: c.call("mkdir", path="/nope/a"))
    c.call("mkdir", path="/d", parents=True)
    check(True, "mkdir -p of an existing folder is ok")

    # rm, rmdir.
    expect("rm", "is_a_directory", "rm of a folder without recursive", lambda: c.call("rm", path="/d/sub"))
    expect("rm", "not_found", "rm /nope", lambda: c.call("rm", path="/nope"))
    expect("rm", "permission_denied", "rm -r of the home", lambda: c.call("rm", path="/", recursive=True))
    expect("rmdir", "directory_not_empty", "rmdir of a non-empty folder", lambda: c.call("rmdir", path="/d/sub"))
    expect("rmdir", "not_a_directory", "rmdir of a file", lambda: c.call("rmdir", path="/d/f.txt"))
    expect("rmdir", "not_found", "rmdir /nope", lambda: c.call("rmdir", path="/nope"))
    expect("rmdir", "permission_denied", "rmdir of the home", lambda: c.call("rmdir", path="/"))

    # mv.
    put_raw(c, "/d/g.txt", b"g")
    expect("mv", "not_found", "mv of a missing name", lambda: c.call("mv", **{"from": "/nope", "to": "/x"}))
    expect("mv", "already_exists", "mv onto a file without overwrite",
           lambda: c.call("mv", **{"from": "/d/g.txt", "to": "/d/f.txt"}))
    expect("mv", "invalid_move", "mv of a folder into itself", lambda: c.call("mv", **{"from": "/d", "to": "/d/sub"}))
    c.mkdir("/m")
    c.mkdir("/m/sub")
    c.mkdir("/n")
    c.mkdir("/n/sub")
    put_raw(c, "/n/sub/full", b"f")
    # Onto an existing folder moves into it: /m/sub into /n lands on /n/sub, which is not empty.
    expect("mv", "directory_not_empty", "mv of a folder onto a non-empty folder with overwrite",
           lambda: c.call("mv", **{"from": "/m/sub", "to": "/n", "overwrite": True}))
    expect("mv", "permission_denied", "mv of the home", lambda: c.call("mv", **{"from": "/", "to": "/x"}))

    # hash, get.
    expect("hash", "not_found", "hash /nope", lambda: c.call("hash", path="/nope"))
    expect("hash", "is_a_directory", "hash of a folder", lambda: c.call("hash", path="/d"))
    expect("get", "not_found", "get /nope", lambda: c.call("get", path="/nope"))
    expect("get", "is_a_directory", "get of a folder", lambda: c.call("get", path="/d"))
    expect("get", "bad_request", "get with offset past the end", lambda: c.call("get", path="/d/f.txt", offset=6))
    get_file_changed(c, home, work)

    # put.
    puts(c, port)
    expect("put_end", "bad_request", "put_end without a put", lambda: c.call("put_end", sha256=sha(b"")))
    expect("put_data", "bad_request", "put_data without a put", lambda: c.call("put_data"))

    # exec.
    bob = login(port, "bob")
    expect("exec", "not_permitted", "exec by a user without allow_exec", lambda: bob.call("exec", argv=["true"]))
    expect("exec", "not_found", "exec of a missing program", lambda: c.call("exec", argv=["no-such-program-xyz"]))
    expect("exec", "bad_request", "exec of an empty argv", lambda: c.call("exec", argv=[]))
    exec_busy(c)

    # quota (bob has 64 KiB).
    expect("put", "quota_exceeded", "put past the quota (small path)", lambda: put_raw(bob, "/big", b"q" * 70_000))
    expect("put", "quota_exceeded", "put past the quota (wait)", lambda: bob.call(
        "put", path="/big", size=300_000, wait=True))
    df = bob.call("df")
    check(df["reserved"] == 0 and df["quota"] == 65536, f"df: nothing reserved when no upload is in flight ({df})")
    bob.close()
    c.close()


def get_file_changed(c, home, work):
    """A file that shrinks on disk while it is being sent: the trailer is file_changed."""
    big = os.path.join(home, "alice", "shrinks.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(16 * 1024 * 1024))
    rid = c.request("get", path="/shrinks.bin")
    head = c.answer(rid)
    with open(big, "r+b") as f:  # the server holds it open: cut it short under its feet
        f.truncate(1024)
    left = head["body_len"]
    while left:
        block = c.rfile.read(min(1 << 20, left))
        if not block:
            check(False, "get: the connection closed mid-body")
            return
        left -= len(block)
    expect("get", "file_changed", "get of a file cut short while being sent", lambda: c.answer(rid))


def puts(c, port):
    expect("put", "already_exists", "put onto a file without overwrite", lambda: put_raw(c, "/d/f.txt", b"new"))
    expect("put", "is_a_directory", "put onto a folder", lambda: put_raw(c, "/d", b"x", overwrite=True))
    expect("put", "checksum_mismatch", "put_end hash differs from the data",
           lambda: put_raw(c, "/c1", b"data", end_sha256=sha(b"other")))
    expect("put", "checksum_mismatch", "header sha256 differs from the data (small path)",
           lambda: put_raw(c, "/c2", b"data", sha256=sha(b"other")))
    big = os.urandom(300_000)
    expect("put", "checksum_mismatch", "header sha256 differs from the data (streamed)",
           lambda: put_raw(c, "/c3", big, sha256=sha(b"other")))
    expect("put", "bad_request", "put_end hash that is not 64 hex digits",
           lambda: put_raw(c, "/c4", b"data", end_sha256="xyz"))
    expect("put", "bad_request", "body_len other than size - offset",
           lambda: put_raw(c, "/c5", b"data", size=10))
    expect("put", "bad_request", "offset past size", lambda: c.call("put", path="/c6", size=4, offset=5, wait=True))

    def not_put_end():
        rid = c.request("put", body_len=4, path="/c7", size=4)
        c.sock.sendall(b"data")
        c.send({"op": "pwd", "id": rid})
        c.answer(rid)
    expect("put", "bad_request", "a frame other than put_end after the body", not_put_end)
    check(c.call("pwd")["path"] == "/", "put: the session goes on after a refused put")

    expect("put", "upload_not_found", "resume (offset > 0) without upload_id",
           lambda: c.call("put", path="/r", size=10, offset=4, wait=True))
    expect("put", "upload_not_found", "resume of an unknown upload_id",
           lambda: c.call("put", path="/r", size=10, offset=4, upload_id="0" * 32, wait=True))

    # A partial of 100 000 bytes, left by a connection that dies mid-body.
    data = os.urandom(400_000)
    a = login(port)
    rid = a.request("put", path="/p.bin", size=len(data), wait=True)
    ready = a.answer(rid)
    uid = ready["upload_id"]
    a.send({"op": "put_data", "id": rid}, body_len=len(data))
    a.sock.sendall(data[:100_000])
    wait_for(lambda: c.call("upload_status", path="/p.bin", size=len(data)).get("offset") == 100_000,
             "the partial to hold the bytes sent")
    expect("put", "upload_not_found", "resume with an offset other than the partial holds",
           lambda: c.call("put", path="/p.bin", size=len(data), offset=50_000, upload_id=uid, wait=True))
    expect("put", "upload_not_found", "resume bound to another path",
           lambda: c.call("put", path="/other.bin", size=len(data), offset=100_000, upload_id=uid, wait=True))
    expect("put", "upload_not_found", "resume bound to another size",
           lambda: c.call("put", path="/p.bin", size=len(data) + 1, offset=100_000, upload_id=uid, wait=True))
    # A newer session takes the upload over; the older one's next bytes get busy.
    b = login(port)
    rid_b = b.request("put", path="/p.bin", size=len(data), offset=100_000, upload_id=uid, wait=True)
    check(b.answer(rid_b).get("offset") == 100_000, "put: a resume takes the upload over")
    a.sock.sendall(data[100_000:])
    a.send({"op": "put_end", "id": rid, "sha256": sha(data)})
    expect("put", "busy", "the older session's upload, taken over", lambda: a.answer(rid))
    b.send({"op": "put_data", "id": rid_b}, body_len=len(data) - 100_000)
    b.sock.sendall(data[100_000:])
    b.send({"op": "put_end", "id": rid_b, "sha256": sha(data)})
    check(b.answer(rid_b)["sha256"] == sha(data), "put: the newer session commits the whole file")
    a.sock.close()
    b.close()


def exec_busy(c):
    """While an exec runs, any other request of the session (another exec too) is busy."""
    rid = c.request("exec", argv=["cat"])
    try:
        started = c.answer(rid)
    except FerryError as e:
        check(False, f"exec: cat could not start ({e}); busy not checked")
        return
    check(started.get("started") is True, "exec: started")
    expect("every request", "busy", "pwd while an exec runs", lambda: c.call("pwd"))
    expect("exec", "busy", "exec while an exec runs", lambda: c.call("exec", argv=["true"]))
    c.send({"op": "stdin_eof", "id": rid, "target": rid})
    while True:
        h = c.answer(rid)
        c._exact(h["body_len"])
        if h.get("done"):
            break
    check(c.call("pwd")["path"] == "/", "exec: the session goes on after the command")


def wait_for(cond, what, within=30):
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def login_server(port):
    """The second server: a 1 KiB header cap, throttling after one failure, a ban after two."""
    c = Ferry("127.0.0.1", port, plaintext=True, timeout=60)
    check(c.server.get("max_header") == 1024, f"hello: max_header is the configured cap ({c.server})")
    # Out of order.
    expect("auth_finish", "bad_request", "auth_finish before auth_start", lambda: c.call("auth_finish", data="c=biws"))
    expect("auth_start", "bad_request", "an unknown mechanism",
           lambda: c.call("auth_start", mechanism="PLAIN", data="n,,n=alice,r=abc"))
    expect("auth_start", "bad_request", "a malformed client-first",
           lambda: c.call("auth_start", mechanism="SCRAM-SHA-256", data="nonsense"))
    c.sock.close()
    d = Ferry("127.0.0.1", port, plaintext=True, timeout=60)
    # A path a 1 KiB answer cannot carry.
    d.login("alice", PASSWORD)
    # 935 bytes: under 4096, but as JSON over 1024 - 96, while each request stays under 1024.
    long_path = "/" + "/".join(["p" * 200] * 4) + "/" + "q" * 130
    for op, fn in PATH_OPS.items():
        expect("every path", "invalid_name", f"{op} of a path longer than the header cap allows",
               lambda fn=fn: fn(d, long_path))
    d.mkdir("/many")
    for i in range(12):
        d.mkdir(f"/many/{i:02d}" + "n" * 150)
    rid, pages = d.request("ls", path="/many"), []
    while True:
        page = d.answer(rid)
        pages.append(page)
        if not page.get("more"):
            break
    check(sum(len(p["entries"]) for p in pages) == 12 and len(pages) >= 4,
          f"ls: pages cut to fit max_header/2 ({[len(p['entries']) for p in pages]} entries per page)")
    d.close()
    # Wrong passwords, then the ban.
    e = Ferry("127.0.0.1", port, plaintext=True, timeout=60)
    expect("auth_finish", "auth_failed", "a wrong password", lambda: e.login("alice", "wrong"))
    expect("auth_finish", "auth_failed", "a wrong password (delayed)", lambda: e.login("alice", "wrong"))
    expect("auth_start", "throttled", "auth_start from a banned address",
           lambda: e.call("auth_start", mechanism="SCRAM-SHA-256", data="n,,n=alice,r=abcdef"))
    e.sock.close()


def limits_server(port):
    """The third server: one connection at most, a login timeout of one second."""
    first = Ferry("127.0.0.1", port, plaintext=True, timeout=60)
    second = socket.create_connection(("127.0.0.1", port), timeout=30)
    s = Ferry.__new__(Ferry)
    s.sock, s.rfile, s.next_id = second, second.makefile("rb"), 0
    session_error("the session", "too_many_connections", "a connection past the limit", s)
    second.close()
    session_error("the session", "timeout", "no login within login_timeout_secs", first)
    first.sock.close()


def frame_of(header):
    return struct.pack(">I", len(header)) + header


def frame_errors(port):
    """Frames the server cannot decode: bad_frame with id 0, then the connection closes."""
    for what, frame in [("a header longer than the cap", struct.pack(">I", 70_000) + b"{"),
                        ("a header that is not JSON", struct.pack(">I", 5) + b"hello"),
                        ("a header that is not an object", struct.pack(">I", 2) + b"[]"),
                        ("body_len not an unsigned integer", frame_of(b'{"op":"pwd","id":1,"body_len":-1}'))]:
        c = Ferry("127.0.0.1", port, plaintext=True, timeout=60)
        c.sock.sendall(frame)
        session_error("the session", "bad_frame", what, c)
        c.sock.close()
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = Ferry.__new__(Ferry)
    f.sock, f.rfile, f.next_id = c, c.makefile("rb"), 0
    expect("auth_start", "bad_request", "auth_start before hello",
           lambda: f.call("auth_start", mechanism="SCRAM-SHA-256", data="n,,n=alice,r=abc"))
    expect("hello", "unsupported_version", "hello with version 2", lambda: f.call("hello", version=2))
    c.close()


def add_users(ferry, data, users):
    for name, extra in users:
        r = subprocess.run([ferry, "user", "add", name, "--data", data, "--password-stdin", *extra],
                           input=PASSWORD + "\n", capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, FERRY_SCRAM_ITERATIONS="4096"))
        check(r.returncode == 0, f"ferry user add {name}: {r.stderr.strip()}")


def start(ferry, tmp, name, users, extra=(), config=None):
    data = os.path.join(tmp, name)
    add_users(ferry, data, users)
    args = list(extra)
    if config:
        path = os.path.join(tmp, f"{name}.toml")
        with open(path, "w") as f:
            f.write(config)
        args += ["--config", path]
    return Server(ferry, data, True, os.path.join(tmp, f"{name}.log"), extra=args), data


def main():
    global VERBOSE
    p = argparse.ArgumentParser()
    p.add_argument("--ferry", required=True, help="path to the ferry binary")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = p.parse_args()
    VERBOSE = a.verbose
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("test took over 300 s")))
    signal.alarm(300)
    codes, pairs = documented()
    check(len(codes) >= 20 and len(pairs) >= 40, f"PROTOCOL.md tables read ({len(codes)} codes, {len(pairs)} pairs)")
    tmp = tempfile.mkdtemp(prefix="ferry-conformance-")
    servers = []
    try:
        main_srv, data = start(a.ferry, tmp, "main", [("alice", ["--allow-exec"]), ("bob", ["--quota", "64KiB"])],
                               config="[exec]\nunconfined = true\n")
        servers.append(main_srv)
        frame_errors(main_srv.port)
        main_server(main_srv.port, os.path.join(data, "homes"), tmp)

        login_srv, _ = start(a.ferry, tmp, "login", [("alice", [])], config=(
            "[limits]\nmax_header_bytes = 1024\n"
            "[auth]\nfree_failures = 1\nban_after = 2\nban_secs = 60\nmax_delay_ms = 50\n"))
        servers.append(login_srv)
        login_server(login_srv.port)
        # Shutdown: a logged-in session hears shutting_down with id 0.
        c = Ferry("127.0.0.1", login_srv.port, plaintext=True, timeout=60)
        login_srv.proc.send_signal(signal.SIGTERM)
        session_error("the session", "shutting_down", "SIGTERM to the server", c)
        c.sock.close()

        limits_srv, _ = start(a.ferry, tmp, "limits", [("alice", [])],
                              extra=["--max-connections", "1", "--login-timeout-secs", "1"])
        servers.append(limits_srv)
        limits_server(limits_srv.port)
    except Exception as e:  # noqa: BLE001 - any crash is a failure of the run
        import traceback
        traceback.print_exc()
        check(False, f"unexpected {e!r}")
    finally:
        signal.alarm(0)
        for s in servers:
            s.stop()
    # Both ways: every documented pair is checked or skipped, every checked pair documented.
    documented_codes = set(codes)
    for row, code in sorted(pairs):
        check(code in documented_codes, f"PROTOCOL.md: {row} lists {code}, which the Errors table does not define")
        check((row, code) in CHECKED or (row, code) in SKIPPED, f"PROTOCOL.md: {row} → {code} is not exercised")
    for row, code in sorted(CHECKED - pairs):
        check(False, f"PROTOCOL.md: {row} → {code} was provoked but is not listed under Errors by operation")
    for code in codes:
        check(any(c == code for _, c in CHECKED | set(SKIPPED)), f"Errors table: {code} is never exercised")
    for (row, code), why in SKIPPED.items():
        print(f"  skipped {row} → {code}: {why}")
    if a.keep or FAILURES:
        print(f"logs and files kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"FAILED ({len(FAILURES)}): " + "; ".join(FAILURES) if FAILURES
          else f"all checks passed ({len(CHECKED)} (operation, code) pairs, {len(SKIPPED)} skipped)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
