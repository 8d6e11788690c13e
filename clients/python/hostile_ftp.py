#!/usr/bin/env python3
"""Issue 15: FTPS data connections that fail their TLS handshake.

Run by crates/ferry-cli/tests/ftp_clients.rs with --port, --user and
--password (TLS required on the server). Standard library only.

For each of STOR, RETR and LIST, on a fresh logged-in FTPS session with
PROT P: PASV, a data connection that speaks plaintext (or says nothing and
closes) instead of TLS, then the command. Prints one JSON line per attempt:
the command's first reply, its final reply (the server must answer the
failed data connection, 426) and whether the control connection still
answers NOOP afterwards (and what).
"""
import argparse
import json
import re
import socket
import ssl
import ftplib


def session(args):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    f = ftplib.FTP_TLS(context=ctx, timeout=10)
    f.connect("127.0.0.1", args.port)
    f.login(args.user, args.password)
    f.prot_p()
    return f


def pasv_port(reply):
    n = [int(x) for x in re.search(r"\((.*)\)", reply).group(1).split(",")]
    return n[4] * 256 + n[5]


def attempt(args, command, garbage):
    f = session(args)
    port = pasv_port(f.sendcmd("PASV"))
    data = socket.create_connection(("127.0.0.1", port), timeout=10)
    if garbage:
        data.sendall(b"this is not a TLS handshake\r\n" * 8)
    f.putcmd(command)
    first = f.getline()
    data.close()
    try:
        final = f.getline()
    except Exception as e:  # noqa: BLE001 - what happened is the result
        final = f"{type(e).__name__}: {e}"
    try:
        after = f.sendcmd("NOOP")
    except Exception as e:  # noqa: BLE001 - what happened is the result
        after = f"{type(e).__name__}: {e}"
    try:
        f.close()
    except Exception:  # noqa: BLE001
        pass
    return {"command": command, "garbage": garbage, "first": first, "final": final, "noop_after": after}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    args = p.parse_args()
    for command, garbage in [("STOR bad.bin", True), ("RETR good.txt", True), ("LIST", False)]:
        print(json.dumps(attempt(args, command, garbage)), flush=True)


if __name__ == "__main__":
    main()
