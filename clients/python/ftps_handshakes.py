#!/usr/bin/env python3
"""Issue 15: many explicit-FTPS handshakes at once, each one checked.

Run by crates/ferry-cli/tests/ftp_clients.rs with --port. Standard library
only. Each of --count sessions (--threads at a time) connects, sends AUTH
TLS, does the TLS handshake on the control connection and QUITs through it.
Prints one JSON line: how many succeeded and the first few failures.

A server that reads the client's next bytes with its FTP parser before it
switches to TLS answers the ClientHello in plaintext (the client sees
"wrong version number"); under load that happened to about 2% of logins.
"""
import argparse
import concurrent.futures
import ftplib
import json
import ssl


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def one(_):
        f = ftplib.FTP_TLS(context=ctx, timeout=20)
        try:
            f.connect("127.0.0.1", args.port)
            f.auth()
            f.quit()
            return None
        except Exception as e:  # noqa: BLE001 - what happened is the result
            f.close()
            return f"{type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        failures = [e for e in pool.map(one, range(args.count)) if e]
    print(json.dumps({"ok": args.count - len(failures), "count": args.count, "failures": failures[:5]}))


if __name__ == "__main__":
    main()
