#!/usr/bin/python3
"""azformat - an independent implementation of the resource formats
(formats.md), used by the tests to check the C code both ways and by the
Resource API emulator. Format 1 keys and CBC here use Python's hashlib and
the `cryptography` package; the known-answer vectors for format 1 come from
the `openssl` command line. Format 2 (AES-256-GCM chunks) uses the
`cryptography` package and produces the format-2 vectors.

As a module: the functions below. As a command: see `azformat.py --help`.
"""
import base64
import hashlib
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DEFAULT_RESOURCE_SECRET = "-#%@AzaionKey@%#---234sdfklgvhjbnn"


def ks(s: bytes) -> str:
    """ks(s) = b64(SHA384(s)): the 64-character key string."""
    return base64.b64encode(hashlib.sha384(s).digest()).decode()


def aes_key(s: bytes) -> bytes:
    """aes(s) = SHA256(ks(s))."""
    return hashlib.sha256(ks(s).encode()).digest()


def hw_hash(hw: str) -> str:
    return ks(("Azaion_" + hw + "_%$$$)0_").encode())


def api_key(email: str, password: str, hwh: str) -> bytes:
    return aes_key((email + "-" + password + "-" + hwh + "-#%@AzaionKey@%#---").encode())


def cbc_encrypt(key: bytes, data: bytes, iv: bytes = None) -> bytes:
    """iv || AES-256-CBC(key, PKCS#7(data))."""
    iv = iv if iv is not None else os.urandom(16)
    p = padding.PKCS7(128).padder()
    padded = p.update(data) + p.finalize()
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + e.update(padded) + e.finalize()


def cbc_decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) < 32 or len(data) % 16:
        raise ValueError("CBC data of %d bytes" % len(data))
    d = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = d.update(data[16:]) + d.finalize()
    u = padding.PKCS7(128).unpadder()
    return u.update(padded) + u.finalize()


def f1_small_size(e_size: int) -> int:
    return min(3072, e_size * 3 // 10)


def archive_key(fragment: bytes) -> bytes:
    """archive_key = SHA256(key_fragment)."""
    return hashlib.sha256(fragment).digest()


def hardware_string(cpu: str, gpu: str, memory: str, serial: str) -> str:
    return "CPU: %s. GPU: %s. Memory: %s. DriveSerial: %s" % (cpu, gpu, memory, serial)


def f1_split(e: bytes):
    """E -> (small, big)."""
    if len(e) < 32 or len(e) % 16:
        raise ValueError("format 1 data of %d bytes" % len(e))
    n = f1_small_size(len(e))
    return e[:n], e[n:]


F1_HASH_CHUNK = 1 << 20


def f1_chunk_hashes(f, chunk_size: int = F1_HASH_CHUNK) -> dict:
    """The chunk-hash list of a format-1 big part (trust.md section 4), read
    from the binary file object f a chunk at a time: the SHA-256 of every
    chunk_size bytes, the last chunk possibly shorter, none for no bytes."""
    out = []
    while True:
        chunk = f.read(chunk_size)
        if not chunk:
            break
        out.append(hashlib.sha256(chunk).hexdigest())
    return {"chunk_size": chunk_size, "sha256": out}


def f1_wrap(email: str, password: str, hwh: str, small: bytes, iv: bytes = None) -> bytes:
    """What the Resource API answers for <name>.small: CBC(api_key, small)."""
    return cbc_encrypt(api_key(email, password, hwh), small, iv)


def f1_unwrap(email: str, password: str, hwh: str, answer: bytes) -> bytes:
    return cbc_decrypt(api_key(email, password, hwh), answer)


# ---- format 2 ----------------------------------------------------------

F2_MAGIC = b"AZB2"
F2_VERSION = 2
F2_HEADER_SIZE = 64
F2_TAG_SIZE = 16
F2_SHIFT_MIN, F2_SHIFT_MAX, F2_SHIFT_DEFAULT = 12, 24, 16


def f2_header(size: int, shift: int = F2_SHIFT_DEFAULT, file_id: bytes = None) -> bytes:
    """The 64-byte header of a big part."""
    if not F2_SHIFT_MIN <= shift <= F2_SHIFT_MAX:
        raise ValueError("chunk_shift %d out of range" % shift)
    file_id = file_id if file_id is not None else os.urandom(16)
    if len(file_id) != 16:
        raise ValueError("file_id of %d bytes" % len(file_id))
    return (F2_MAGIC + bytes([F2_VERSION, shift, 0, 0]) + struct.pack("<Q", size)
            + file_id + bytes(32))


def f2_parse_header(raw: bytes):
    """-> (size, shift, file_id); ValueError when malformed."""
    if len(raw) < F2_HEADER_SIZE:
        raise ValueError("short header")
    raw = raw[:F2_HEADER_SIZE]
    if raw[:4] != F2_MAGIC or raw[4] != F2_VERSION:
        raise ValueError("not a format-2 big part")
    shift = raw[5]
    if not F2_SHIFT_MIN <= shift <= F2_SHIFT_MAX:
        raise ValueError("chunk_shift %d out of range" % shift)
    if any(raw[6:8]) or any(raw[32:64]):
        raise ValueError("reserved bytes not zero")
    (size,) = struct.unpack("<Q", raw[8:16])
    return size, shift, raw[16:32]


def f2_chunk_count(size: int, shift: int) -> int:
    return max(1, -(-size // (1 << shift)))


def _f2_nonce(i: int) -> bytes:
    return struct.pack("<IQ", 0, i)


def _f2_aad(header: bytes, i: int) -> bytes:
    return header + struct.pack("<Q", i)


def f2_encrypt(key: bytes, plain: bytes, shift: int = F2_SHIFT_DEFAULT,
               file_id: bytes = None) -> bytes:
    """The whole big part of plain under the content key."""
    header = f2_header(len(plain), shift, file_id)
    gcm = AESGCM(key)
    cs = 1 << shift
    out = [header]
    for i in range(f2_chunk_count(len(plain), shift)):
        out.append(gcm.encrypt(_f2_nonce(i), plain[i * cs:(i + 1) * cs], _f2_aad(header, i)))
    return b"".join(out)


def f2_decrypt(key: bytes, big: bytes) -> bytes:
    """Checks every chunk (cryptography's InvalidTag on failure) and the length."""
    size, shift, _ = f2_parse_header(big)
    header = big[:F2_HEADER_SIZE]
    gcm = AESGCM(key)
    cs = 1 << shift
    n = f2_chunk_count(size, shift)
    if len(big) != F2_HEADER_SIZE + size + n * F2_TAG_SIZE:
        raise ValueError("big part of %d bytes, the header says %d" %
                         (len(big), F2_HEADER_SIZE + size + n * F2_TAG_SIZE))
    out = []
    for i in range(n):
        off = F2_HEADER_SIZE + i * (cs + F2_TAG_SIZE)
        plen = min(cs, size - i * cs)
        out.append(gcm.decrypt(_f2_nonce(i), big[off:off + plen + F2_TAG_SIZE],
                               _f2_aad(header, i)))
    return b"".join(out)


# ---- command line -------------------------------------------------------

def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def _f1_key(args) -> bytes:
    if args.key_hex is not None:
        key = bytes.fromhex(args.key_hex)
        if len(key) != 32:
            raise SystemExit("azformat: --key-hex needs 32 bytes")
        return key
    return aes_key(args.secret.encode())


def _hw_hash(args) -> str:
    return args.hw_hash if args.hw_hash is not None else hw_hash(args.hardware)


def _iv(args):
    return bytes.fromhex(args.iv_hex) if args.iv_hex else None


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="azformat.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def f1_key_args(p):
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--key-hex", help="the 32-byte AES key")
        g.add_argument("--secret", help="a resource_secret; the key is aes(secret)")

    def api_args(p):
        p.add_argument("--email", required=True)
        p.add_argument("--password", required=True)
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--hardware", help="the hardware string H")
        g.add_argument("--hw-hash", help="hw_hash itself")

    p = sub.add_parser("f1-encrypt", help="E = CBC(key, P)")
    f1_key_args(p)
    p.add_argument("--iv-hex", help="a fixed IV (default random)")
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("f1-decrypt", help="P from E")
    f1_key_args(p)
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("f1-split", help="E -> small, big")
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--small", required=True)
    p.add_argument("--big", required=True)

    p = sub.add_parser("f1-join", help="small, big -> E")
    p.add_argument("--small", required=True)
    p.add_argument("--big", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("f1-hashes", help="big part -> its chunk-hash list (JSON)")
    p.add_argument("--chunk-size", type=int, default=F1_HASH_CHUNK)
    p.add_argument("--in", dest="inp", required=True)

    p = sub.add_parser("f1-wrap", help="small -> CBC(api_key, small)")
    api_args(p)
    p.add_argument("--iv-hex", help="a fixed IV (default random)")
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("f1-unwrap", help="CBC(api_key, small) -> small")
    api_args(p)
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("f2-encrypt", help="P -> big part")
    p.add_argument("--key-hex", required=True)
    p.add_argument("--shift", type=int, default=F2_SHIFT_DEFAULT)
    p.add_argument("--file-id", help="16 bytes in hex (default random)")
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("f2-decrypt", help="big part -> P, every tag checked")
    p.add_argument("--key-hex", required=True)
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("keys", help="print ks, aes, hw_hash and api_key for the given inputs")
    p.add_argument("--secret")
    p.add_argument("--hardware")
    p.add_argument("--email")
    p.add_argument("--password")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "f1-encrypt":
            _write(args.out, cbc_encrypt(_f1_key(args), _read(args.inp), _iv(args)))
        elif args.cmd == "f1-decrypt":
            _write(args.out, cbc_decrypt(_f1_key(args), _read(args.inp)))
        elif args.cmd == "f1-split":
            small, big = f1_split(_read(args.inp))
            _write(args.small, small)
            _write(args.big, big)
        elif args.cmd == "f1-join":
            _write(args.out, _read(args.small) + _read(args.big))
        elif args.cmd == "f1-hashes":
            import json
            with open(args.inp, "rb") as f:
                print(json.dumps(f1_chunk_hashes(f, args.chunk_size)))
        elif args.cmd == "f1-wrap":
            _write(args.out, f1_wrap(args.email, args.password, _hw_hash(args),
                                     _read(args.inp), _iv(args)))
        elif args.cmd == "f1-unwrap":
            _write(args.out, f1_unwrap(args.email, args.password, _hw_hash(args),
                                       _read(args.inp)))
        elif args.cmd == "f2-encrypt":
            key = bytes.fromhex(args.key_hex)
            fid = bytes.fromhex(args.file_id) if args.file_id else None
            _write(args.out, f2_encrypt(key, _read(args.inp), args.shift, fid))
        elif args.cmd == "f2-decrypt":
            _write(args.out, f2_decrypt(bytes.fromhex(args.key_hex), _read(args.inp)))
        elif args.cmd == "keys":
            if args.secret is not None:
                print("ks", ks(args.secret.encode()))
                print("aes", aes_key(args.secret.encode()).hex())
            if args.hardware is not None:
                h = hw_hash(args.hardware)
                print("hw_hash", h)
                if args.email is not None and args.password is not None:
                    print("api_key", api_key(args.email, args.password, h).hex())
    except (ValueError, InvalidTag) as e:
        sys.exit("azformat: %s: %s" % (args.cmd, str(e) or "authentication failed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
