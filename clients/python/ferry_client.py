#!/usr/bin/env python3
"""A minimal ferry client in standard-library Python (3.11+). See docs/PROTOCOL.md.

    FERRY_PASSWORD=... python3 ferry_client.py [--plaintext] [--fingerprint FP] HOST PORT USER
        {ls PATH | mkdir PATH | put LOCAL REMOTE | get REMOTE LOCAL}

`Chat` is a small blocking client of the UDP chat relay ("Chat relay").
"""
import argparse, base64, hashlib, hmac, json, os, socket, ssl, struct, sys, time

CHUNK = 1024 * 1024


class FerryError(Exception):
    """An error answer from the server: `code` is stable, `message` is for people."""

    def __init__(self, code, message):
        super().__init__(f"{message} ({code})")
        self.code, self.message = code, message


def fingerprint_of(der):
    """`SHA256:` + unpadded base64 of the SHA-256 of the DER certificate."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def scram_client_final(password, client_first_bare, server_first, client_nonce):
    """Returns (client-final message, expected server-final message) per RFC 5802/7677."""
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    nonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
    if not nonce.startswith(client_nonce) or len(nonce) <= len(client_nonce) or "m" in attrs:
        raise FerryError("bad_frame", "SCRAM: bad server-first message")
    if not 4096 <= iters <= 10_000_000:
        raise FerryError("bad_frame", f"SCRAM: iteration count {iters} out of range")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={nonce}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    server_sig = hmac.new(server_key, auth_message, "sha256").digest()
    return (f"{without_proof},p={base64.b64encode(proof).decode()}",
            f"v={base64.b64encode(server_sig).decode()}")


class Ferry:
    def __init__(self, host, port, fingerprint=None, plaintext=False, timeout=30.0):
        """Connects and says hello. TLS unless `plaintext`; `fingerprint` (if given) must match."""
        sock = socket.create_connection((host, port), timeout=timeout)
        self.fingerprint = None
        if not plaintext:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # pinned below instead
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            sock = ctx.wrap_socket(sock, server_hostname=host)
            self.fingerprint = fingerprint_of(sock.getpeercert(binary_form=True))
            if fingerprint is not None and fingerprint != self.fingerprint:
                sock.close()
                raise FerryError("host_key_mismatch",
                                 f"server presented {self.fingerprint}, expected {fingerprint}")
        self.sock, self.rfile, self.next_id = sock, sock.makefile("rb"), 0
        self.server = self.call("hello", version=1, client="ferry_client.py/1")

    # -- frames ------------------------------------------------------------
    def send(self, header, body_len=0):
        """Sends one header; the caller then sends exactly `body_len` body bytes."""
        if body_len:
            header = dict(header, body_len=body_len)
        raw = json.dumps(header, separators=(",", ":")).encode()
        self.sock.sendall(struct.pack(">I", len(raw)) + raw)

    def _exact(self, n):
        if len(data := self.rfile.read(n)) != n:
            raise ConnectionError("the server closed the connection")
        return data

    def recv(self):
        """The next header (a dict, `body_len` included); its body is left unread."""
        (n,) = struct.unpack(">I", self._exact(4))
        header = json.loads(self._exact(n))
        header.setdefault("body_len", 0)
        return header

    def answer(self, rid):
        """The next header, which must answer request `rid`; raises FerryError on an error answer."""
        h = self.recv()
        if not h.get("ok"):
            self._exact(h["body_len"])
            err = h.get("error") or {}
            raise FerryError(err.get("code", "unknown"), err.get("message", "error without message"))
        if h.get("id") != rid:
            raise FerryError("bad_frame", f"answer for request {h.get('id')}, expected {rid}")
        return h

    def request(self, op, body_len=0, **fields):
        self.next_id += 1  # ids from 1 up: id 0 is the server speaking for the whole session
        self.send({"op": op, "id": self.next_id, **fields}, body_len)
        return self.next_id

    def call(self, op, **fields):
        return self.answer(self.request(op, **fields))

    # -- operations --------------------------------------------------------
    def login(self, user, password):
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = "n={},r={}".format(user.replace("=", "=3D").replace(",", "=2C"), nonce)
        server_first = self.call("auth_start", mechanism="SCRAM-SHA-256", data="n,," + bare)["data"]
        final, expected = scram_client_final(password, bare, server_first, nonce)
        done = self.call("auth_finish", data=final)
        if not hmac.compare_digest(done["data"].encode(), expected.encode()):
            raise FerryError("bad_frame", "the server failed to prove it knows the password verifier")
        return done

    def ls(self, path="."):
        rid, entries = self.request("ls", path=path), []
        while True:
            page = self.answer(rid)
            entries += page["entries"]
            if not page.get("more"):
                return entries

    def mkdir(self, path, parents=False):
        self.call("mkdir", path=path, parents=parents)

    def put(self, local, remote, overwrite=False):
        """Uploads a file without `wait`: the server takes body and put_end, then answers once."""
        with open(local, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            rid = self.request("put", body_len=size, path=remote, size=size, overwrite=overwrite)
            digest, left = hashlib.sha256(), size
            while left:
                block = f.read(min(CHUNK, left))
                if not block:  # the file shrank: the frame cannot be finished
                    self.sock.close()
                    raise ConnectionError(f"{local} shrank while being sent")
                digest.update(block)
                self.sock.sendall(block)
                left -= len(block)
        sha = digest.hexdigest()
        self.send({"op": "put_end", "id": rid, "sha256": sha})
        done = self.answer(rid)
        if done["sha256"] != sha:
            raise FerryError("checksum_mismatch", f"server stored {done['sha256']}, sent {sha}")
        return done

    def get(self, remote, local):
        """Downloads to `local` (through `local.part`), checked against the trailer's sha256."""
        rid = self.request("get", path=remote, offset=0)
        head = self.answer(rid)
        left, digest, part = head["body_len"], hashlib.sha256(), local + ".part"
        if left != head["size"]:
            raise FerryError("bad_frame", "get: body_len does not match size")
        with open(part, "wb") as f:
            while left:
                block = self.rfile.read(min(CHUNK, left))
                if not block:
                    raise ConnectionError("the server closed the connection mid-body")
                digest.update(block)
                f.write(block)
                left -= len(block)
        try:
            trailer = self.answer(rid)  # raises FerryError("file_changed") on an error trailer
            if trailer.get("sha256") != digest.hexdigest():
                raise FerryError("checksum_mismatch", f"{remote}: received data does not match its sha256")
        except BaseException:
            os.unlink(part)
            raise
        os.replace(part, local)
        return head["size"], digest.hexdigest()

    def close(self):
        try:
            self.call("bye")
        except (OSError, FerryError):
            pass
        self.sock.close()


CHAT_JOIN_MIN_LEN = 256  # the relay answers an unproven address with no more bytes than it sent


def _chat_bytes(d):
    return json.dumps(d, separators=(",", ":")).encode()


def chat_join_datagram(nick, cookie=None):
    """A `join`, echoing the relay's `retry` cookie if given, padded to at least 256 bytes."""
    d = {"t": "join", "nick": nick}
    if cookie is not None:
        d["cookie"] = cookie
    bare = len(_chat_bytes(d))
    if bare < CHAT_JOIN_MIN_LEN:
        d["pad"] = "." * max(1, CHAT_JOIN_MIN_LEN - bare - 9)  # ,"pad":"" is 9 bytes
    return _chat_bytes(d)


class Chat:
    """Joins the chat relay at (host, port) as `nick`: padded `join`, `retry` cookie, `join` again.

    Blocking and single-threaded: `say`/`who` wait for the relay's ack (retrying with backoff);
    incoming items are acknowledged, put in order and kept for `next_event`, which returns
    ("message", from, text, private), ("who", nicks) or ("notice", text), or None on timeout.
    """

    def __init__(self, host, port, nick, timeout=0.5, attempts=6):
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.connect(addr)
        self.timeout, self.attempts, self.nick = timeout, attempts, nick
        self.seq, self.expected, self.ahead, self.events, self.acked = 0, 1, {}, [], set()
        cookie = None
        for _ in range(attempts):
            self.sock.send(chat_join_datagram(nick, cookie))
            d = self._recv_until(time.monotonic() + timeout, lambda d: d.get("t") in ("retry", "welcome", "refused"))
            if d is None:
                continue
            if d["t"] == "refused":
                self.sock.close()
                raise FerryError(d.get("code", "refused"), d.get("reason", ""))
            if d["t"] == "retry":  # prove we receive here: the same join, with the cookie
                cookie = d["cookie"]
                continue
            self.key = d["key"]
            return
        self.sock.close()
        raise FerryError("timeout", "no answer from the chat relay")

    def _send(self, d):
        self.sock.send(_chat_bytes(d))

    def _recv_until(self, deadline, want):
        """Reads datagrams until one satisfies `want` (returned) or the deadline (None)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                d = json.loads(self.sock.recv(2048))
            except (TimeoutError, socket.timeout):
                return None
            except (ConnectionRefusedError, ValueError):
                continue
            if not isinstance(d, dict):
                continue
            if d.get("t") in ("deliver", "who_list", "notice") and isinstance(d.get("seq"), int):
                self._accept(d)
            elif d.get("t") == "ack":
                self.acked.add(d.get("seq"))
            if want(d):
                return d

    def _accept(self, d):
        """Acks a numbered item (again if a duplicate) and releases items in order."""
        seq = d["seq"]
        if seq >= self.expected + 32:
            return  # beyond the window: no ack, the relay retries
        self._send({"t": "ack", "key": self.key, "seq": seq})
        if seq >= self.expected:
            self.ahead[seq] = d
        while self.expected in self.ahead:
            item = self.ahead.pop(self.expected)
            self.expected += 1
            if item["t"] == "deliver":
                self.events.append(("message", item["from"], item["text"], item["private"]))
            elif item["t"] == "who_list":
                self.events.append(("who", item["nicks"]))
            else:
                self.events.append(("notice", item["text"]))

    def _request(self, d):
        self.seq += 1
        d.update(key=self.key, seq=self.seq)
        wait = self.timeout / 2
        for _ in range(self.attempts * 2):
            self._send(d)
            if self._recv_until(time.monotonic() + wait, lambda _: self.seq in self.acked) or self.seq in self.acked:
                return
            wait = min(wait * 2, 2.0)
        raise FerryError("timeout", "the chat relay did not acknowledge")

    def say(self, text, to=None):
        d = {"t": "msg", "text": text}
        if to is not None:
            d["to"] = to
        self._request(d)

    def next_event(self, timeout=5.0):
        if not self.events:
            self._recv_until(time.monotonic() + timeout, lambda _: bool(self.events))
        return self.events.pop(0) if self.events else None

    def who(self, timeout=5.0):
        self._request({"t": "who"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = self.next_event(deadline - time.monotonic())
            if ev and ev[0] == "who":
                return ev[1]
        raise FerryError("timeout", "no who_list from the chat relay")

    def quit(self):
        for _ in range(3):
            self._send({"t": "quit", "key": self.key})
            if self._recv_until(time.monotonic() + self.timeout, lambda d: d.get("t") == "bye"):
                break
        self.sock.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="minimal ferry client (password from FERRY_PASSWORD)")
    p.add_argument("--plaintext", action="store_true", help="no TLS (server runs --insecure-plaintext)")
    p.add_argument("--fingerprint", help="expected certificate fingerprint, SHA256:...")
    p.add_argument("host"), p.add_argument("port", type=int), p.add_argument("user")
    p.add_argument("command", choices=["ls", "mkdir", "put", "get"]), p.add_argument("args", nargs="*")
    a = p.parse_args(argv)
    if len(a.args) != {"ls": 1, "mkdir": 1, "put": 2, "get": 2}[a.command]:
        p.error(f"wrong number of arguments for {a.command}")
    try:
        c = Ferry(a.host, a.port, a.fingerprint, a.plaintext)
        if not a.plaintext and a.fingerprint is None:
            c.sock.close()
            raise FerryError("host_key_unknown", f"pass --fingerprint {c.fingerprint} if that is the server's")
        c.login(a.user, os.environ.get("FERRY_PASSWORD", ""))
        if a.command == "ls":
            for e in c.ls(a.args[0]):
                print(f"{e['kind']:<7} {e['size']:>12} {e['name']}")
        elif a.command == "mkdir":
            c.mkdir(a.args[0])
        elif a.command == "put":
            print(c.put(a.args[0], a.args[1])["sha256"])
        else:
            print(c.get(a.args[0], a.args[1])[1])
        c.close()
    except (FerryError, OSError) as e:
        print(f"ferry: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
