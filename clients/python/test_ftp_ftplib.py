#!/usr/bin/env python3
"""Drives ferry's FTP front end with Python's ftplib, checking every command
by its reply code (issue 15).

    python3 clients/python/test_ftp_ftplib.py --port P --user U --password PW [--plaintext] [-v]

Expects a running `ferry serve` with FTP on 127.0.0.1:P and an empty home
for U. Without --plaintext it speaks explicit FTPS (AUTH TLS, PROT P) and
also checks that a login without TLS is refused. Exits 0 when every check
passed; the Rust test crates/ferry-cli/tests/ftp_clients.rs runs it.
"""
import argparse, ftplib, hashlib, io, os, socket, ssl, sys

FAILURES = []
VERBOSE = False


def check(cond, what):
    if cond:
        if VERBOSE:
            print(f"  ok   {what}")
    else:
        print(f"  FAIL {what}")
        FAILURES.append(what)


def code_of(reply):
    return str(reply)[:3]


def expect(code, what, fn):
    """Runs fn; checks the reply (or the error's reply) starts with `code`."""
    try:
        r = fn()
    except ftplib.all_errors as e:
        r = str(e)
    got = code_of(r)
    check(got == code, f"{what}: got {r!r}, expected {code}")
    return r


def expect_refused(what, fn):
    """Runs fn; checks a 4xx/5xx error (never success)."""
    try:
        r = fn()
    except ftplib.all_errors as e:
        check(str(e)[:1] in "45", f"{what}: refused with {e}")
        return str(e)
    check(False, f"{what}: succeeded with {r!r}, expected a refusal")
    return str(r)


class FtpsUploadTolerant(ftplib.FTP_TLS):
    """FTP_TLS whose uploads accept a data connection closed without TLS
    close_notify: libunftp 0.24 drops an upload's data connection without
    one (its downloads do send it), which makes ftplib's unwrap() raise and
    leaves the 226 unread. The reply is still checked."""

    def storbinary(self, cmd, fp, blocksize=65536, callback=None, rest=None):
        self.voidcmd("TYPE I")
        with self.transfercmd(cmd, rest) as conn:
            while buf := fp.read(blocksize):
                conn.sendall(buf)
            try:
                conn.unwrap()
            except (ssl.SSLError, OSError):
                pass
        return self.voidresp()


def connect(args):
    if args.plaintext:
        ftp = ftplib.FTP(timeout=30)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ftp = FtpsUploadTolerant(context=ctx, timeout=30)
    expect("220", "greeting", lambda: ftp.connect("127.0.0.1", args.port))
    return ftp


def retr(ftp, path, rest=None):
    buf = io.BytesIO()
    r = ftp.retrbinary(f"RETR {path}", buf.write, rest=rest)
    return r, buf.getvalue()


def main():
    global VERBOSE
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--plaintext", action="store_true")
    p.add_argument("-v", action="store_true")
    args = p.parse_args()
    VERBOSE = args.v

    if not args.plaintext:
        # A password in the clear is refused before it is checked.
        raw = ftplib.FTP(timeout=30)
        raw.connect("127.0.0.1", args.port)
        expect_refused("USER without AUTH TLS", lambda: raw.login(args.user, args.password))
        raw.close()

    ftp = connect(args)
    expect("230", "login", lambda: ftp.login(args.user, args.password))
    if not args.plaintext:
        expect("200", "PROT P", ftp.prot_p)
    feat = ftp.sendcmd("FEAT")
    check(code_of(feat) == "211", f"FEAT: {feat!r}")
    for f in ("SIZE", "MDTM", "MLST", "REST STREAM"):
        check(f in feat, f"FEAT lists {f}")
    if not args.plaintext:
        check("AUTH TLS" in feat, "FEAT lists AUTH TLS")
    expect("257", "PWD at the home", lambda: ftp.sendcmd("PWD"))
    check(ftp.pwd() == "/", "PWD is /")

    # Directories.
    expect("257", "MKD docs", lambda: ftp.sendcmd("MKD docs"))
    expect("550", "MKD docs again", lambda: ftp.sendcmd("MKD docs"))
    expect("250", "CWD docs", lambda: ftp.sendcmd("CWD docs"))
    check(ftp.pwd() == "/docs", f"PWD in docs: {ftp.pwd()!r}")
    expect("550", "CWD missing", lambda: ftp.sendcmd("CWD missing"))
    r = ftp.sendcmd("CDUP")
    check(code_of(r) in ("200", "250"), f"CDUP: {r!r}")
    check(ftp.pwd() == "/", f"PWD after CDUP: {ftp.pwd()!r}")

    # Upload, metadata, listings, download.
    data = os.urandom(300_000)
    expect("226", "STOR docs/a.bin", lambda: ftp.storbinary("STOR docs/a.bin", io.BytesIO(data)))
    expect("213", "SIZE", lambda: ftp.sendcmd("SIZE docs/a.bin"))
    check(ftp.size("docs/a.bin") == len(data), "SIZE is the length")
    expect("213", "MDTM", lambda: ftp.sendcmd("MDTM docs/a.bin"))
    expect("550", "SIZE missing", lambda: ftp.sendcmd("SIZE docs/missing"))
    lines = []
    expect("226", "LIST docs", lambda: ftp.retrlines("LIST docs", lines.append))
    check(any(l.endswith(" a.bin") and str(len(data)) in l for l in lines), f"LIST shows a.bin: {lines!r}")
    names = []
    expect("226", "NLST docs", lambda: ftp.retrlines("NLST docs", names.append))
    check([n.rsplit("/", 1)[-1] for n in names] == ["a.bin"], f"NLST: {names!r}")
    facts = {}
    expect("226", "MLSD docs", lambda: ftp.retrlines("MLSD docs", lambda l: facts.setdefault(l.split("; ")[-1].strip(), l)))
    check("a.bin" in facts and f"size={len(data)}" in facts.get("a.bin", "").lower(), f"MLSD: {facts!r}")
    r = expect("250", "MLST", lambda: ftp.sendcmd("MLST /docs/a.bin"))
    check("type=file" in r.lower(), f"MLST facts: {r!r}")
    r, got = retr(ftp, "docs/a.bin")
    check(code_of(r) == "226" and got == data, f"RETR whole: {r!r}, {len(got)} bytes")
    r, got = retr(ftp, "docs/a.bin", rest=100_000)
    check(code_of(r) == "226" and got == data[100_000:], f"REST + RETR: {r!r}, {len(got)} bytes")
    expect("550", "RETR missing", lambda: retr(ftp, "docs/missing"))
    expect("550", "RETR a directory", lambda: retr(ftp, "docs"))
    small = os.urandom(4096)
    expect("226", "STOR docs/small.bin", lambda: ftp.storbinary("STOR docs/small.bin", io.BytesIO(small)))
    r, got = retr(ftp, "docs/small.bin")
    check(code_of(r) == "226" and got == small, f"RETR small whole: {r!r}, {len(got)} bytes")
    r, got = retr(ftp, "docs/small.bin", rest=4000)
    check(code_of(r) == "226" and got == small[4000:], f"REST + RETR small: {r!r}, {len(got)} bytes")
    expect("250", "DELE docs/small.bin", lambda: ftp.sendcmd("DELE docs/small.bin"))
    expect("226", "STOR an empty file", lambda: ftp.storbinary("STOR docs/empty.bin", io.BytesIO(b"")))
    expect("213", "SIZE of the empty file", lambda: ftp.sendcmd("SIZE docs/empty.bin"))
    check(ftp.size("docs/empty.bin") == 0, "the empty file is not empty")
    expect("250", "DELE docs/empty.bin", lambda: ftp.sendcmd("DELE docs/empty.bin"))

    # Resume an upload: REST n + STOR keeps the first n bytes; APPE appends.
    half = len(data) // 2
    expect("226", "STOR first half", lambda: ftp.storbinary("STOR docs/r.bin", io.BytesIO(data[:half])))
    expect("226", "REST + STOR rest", lambda: ftp.storbinary("STOR docs/r.bin", io.BytesIO(data[half:]), rest=half))
    r, got = retr(ftp, "docs/r.bin")
    check(got == data, f"resumed upload is whole ({len(got)} bytes)")
    expect("226", "APPE", lambda: ftp.storbinary("APPE docs/r.bin", io.BytesIO(b"tail")))
    r, got = retr(ftp, "docs/r.bin")
    check(got == data + b"tail", f"APPE appended ({len(got)} bytes)")
    expect("550", "REST past the end + STOR", lambda: ftp.storbinary("STOR docs/r.bin", io.BytesIO(b"x"), rest=10**9))
    # libunftp 0.24 keeps a REST offset after a failed transfer (RFC 959:
    # it applies to the next transfer only); clear it.
    expect("350", "REST 0", lambda: ftp.sendcmd("REST 0"))
    r, got = retr(ftp, "docs/r.bin")
    check(got == data + b"tail", "a refused resume leaves the file as it was")

    # The stored hash.
    r = expect("213", "SITE SHA256", lambda: ftp.sendcmd("SITE SHA256 /docs/r.bin"))
    check(hashlib.sha256(data + b"tail").hexdigest() in r, f"SITE SHA256 is the file's hash: {r!r}")

    # Rename, delete, remove directories.
    expect("350", "RNFR", lambda: ftp.sendcmd("RNFR docs/a.bin"))
    expect("250", "RNTO", lambda: ftp.sendcmd("RNTO docs/b.bin"))
    expect("550", "SIZE of the old name", lambda: ftp.sendcmd("SIZE docs/a.bin"))
    check(ftp.size("docs/b.bin") == len(data), "renamed file kept its size")
    expect("250", "DELE", lambda: ftp.sendcmd("DELE docs/b.bin"))
    expect("550", "DELE missing", lambda: ftp.sendcmd("DELE docs/b.bin"))
    expect("550", "RMD not empty", lambda: ftp.sendcmd("RMD docs"))
    expect("250", "DELE r.bin", lambda: ftp.sendcmd("DELE docs/r.bin"))
    expect("250", "RMD docs", lambda: ftp.sendcmd("RMD docs"))

    # Paths never leave the home.
    expect("550", "CWD .. at the home", lambda: ftp.sendcmd("CWD .."))
    expect("550", "CWD ../../etc", lambda: ftp.sendcmd("CWD ../../etc"))
    expect_refused("RETR /etc/passwd", lambda: retr(ftp, "/etc/passwd"))
    expect_refused("RETR ../../../../etc/passwd", lambda: retr(ftp, "../../../../etc/passwd"))
    expect_refused("SIZE /../../etc/passwd", lambda: ftp.sendcmd("SIZE /../../etc/passwd"))
    expect_refused("STOR ../escape", lambda: ftp.storbinary("STOR ../escape", io.BytesIO(b"x")))
    expect_refused("MKD /../escape", lambda: ftp.sendcmd("MKD /../escape"))
    expect_refused("SITE SHA256 ../../etc/passwd", lambda: ftp.sendcmd("SITE SHA256 ../../etc/passwd"))
    check(ftp.pwd() == "/", "still at the home")

    # No FTP bounce: active mode to any address is refused.
    expect_refused("PORT to a third party", lambda: ftp.sendcmd("PORT 192,0,2,1,0,80"))
    expect_refused("EPRT to a third party", lambda: ftp.sendcmd("EPRT |1|192.0.2.1|80|"))
    expect_refused("PORT to the client", lambda: ftp.sendcmd("PORT 127,0,0,1,200,10"))

    expect("221", "QUIT", ftp.quit)

    # Anonymous login is refused.
    anon = connect(args)
    expect_refused("anonymous login", lambda: anon.login("anonymous", "guest@example.com"))
    anon.close()

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("ftplib: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
