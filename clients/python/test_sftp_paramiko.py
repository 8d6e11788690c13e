#!/usr/bin/env python3
"""Issue 14: paramiko against ferry's SFTP front end.

Run by crates/ferry-cli/tests/sftp_clients.rs with FERRY_SFTP_PORT,
FERRY_SFTP_USER, FERRY_SFTP_PASSWORD and FERRY_SFTP_HOME (the host folder
of the user's home, to check what landed byte for byte).

- writes at random offsets, out of order, into one file;
- several files written in parallel over one connection and over several;
- random-offset reads;
all compared with what was meant, byte for byte.
"""
import os
import random
import sys
import threading

import paramiko

PORT = int(os.environ["FERRY_SFTP_PORT"])
USER = os.environ["FERRY_SFTP_USER"]
PASSWORD = os.environ["FERRY_SFTP_PASSWORD"]
HOME = os.environ["FERRY_SFTP_HOME"]


def connect():
    t = paramiko.Transport(("127.0.0.1", PORT))
    t.connect(username=USER, password=PASSWORD)
    return t, paramiko.SFTPClient.from_transport(t)


def random_offset_writes(sftp, rng):
    size = 3 * 1024 * 1024 + 123
    data = rng.randbytes(size)
    chunk = 32 * 1024
    offsets = list(range(0, size, chunk))
    rng.shuffle(offsets)
    with sftp.open("random.bin", "wb") as f:
        for off in offsets:
            f.seek(off)
            f.write(data[off:off + chunk])
    with open(os.path.join(HOME, "random.bin"), "rb") as f:
        assert f.read() == data, "random-offset writes differ"
    # Random-offset reads.
    with sftp.open("random.bin", "rb") as f:
        for _ in range(200):
            off = rng.randrange(0, size)
            n = rng.randrange(1, 100_000)
            f.seek(off)
            got = f.read(n)
            assert got == data[off:off + n], f"read at {off}+{n} differs"
    return size


def parallel_writes(rng):
    datas = {f"par{i}.bin": rng.randbytes(1024 * 1024 + i) for i in range(6)}
    errors = []

    def put(name, data):
        try:
            t, sftp = connect()
            with sftp.open(name, "wb") as f:
                f.set_pipelined(True)
                for off in range(0, len(data), 32768):
                    f.write(data[off:off + 32768])
            sftp.close()
            t.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {e!r}")

    threads = [threading.Thread(target=put, args=kv) for kv in datas.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    for name, data in datas.items():
        with open(os.path.join(HOME, name), "rb") as f:
            assert f.read() == data, f"{name} differs"


def over_quota():
    """About 10 MB are stored; the quota is 16 MiB: 8 MiB more must fail,
    with a message that says quota, and leave nothing under the name."""
    t, sftp = connect()
    try:
        with sftp.open("too_big.bin", "wb") as f:
            block = b"q" * 32768
            for _ in range(8 * 32):
                f.write(block)
        raise AssertionError("an upload over the quota was accepted")
    except IOError as e:
        assert "quota" in str(e).lower(), f"over-quota error without 'quota': {e!r}"
    finally:
        t.close()
    assert not os.path.exists(os.path.join(HOME, "too_big.bin")), "a refused upload left a file"


def main():
    rng = random.Random(14)
    t, sftp = connect()
    random_offset_writes(sftp, rng)
    # Several files open at once on one session, written interleaved.
    datas = [rng.randbytes(200_000 + i) for i in range(4)]
    files = [sftp.open(f"inter{i}.bin", "wb") for i in range(4)]
    for off in range(0, 200_004, 10_000):
        for d, f in zip(datas, files):
            if off < len(d):
                f.write(d[off:off + 10_000])
    for f in files:
        f.close()
    for i, d in enumerate(datas):
        with open(os.path.join(HOME, f"inter{i}.bin"), "rb") as f:
            assert f.read() == d, f"inter{i}.bin differs"
    # Links are refused.
    try:
        sftp.symlink("random.bin", "link")
        raise AssertionError("symlink was accepted")
    except IOError:
        pass
    sftp.close()
    t.close()
    parallel_writes(rng)
    over_quota()
    print("paramiko: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
