"""attest - the API side of attested enrolment (docs/trust.md section 1) for
the Resource API emulator: TPM 2.0 structures parsed from their marshalled
bytes, the EK certificate checked against the trusted manufacturer CAs,
TPM2_MakeCredential, and the checks of a certify and a quote.

Nothing here trusts the device: every structure is parsed and checked by
itself; a failed check raises Refused with a reason that names it.
"""
import hashlib
import hmac
import os
import struct
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ALG_RSA, ALG_ECC, ALG_NULL = 0x0001, 0x0023, 0x0010
ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512 = 0x0004, 0x000B, 0x000C, 0x000D
ALG_AES, ALG_CFB = 0x0006, 0x0043
ALG_RSASSA, ALG_RSAPSS = 0x0014, 0x0016
HASHES = {ALG_SHA1: hashlib.sha1, ALG_SHA256: hashlib.sha256,
          ALG_SHA384: hashlib.sha384, ALG_SHA512: hashlib.sha512}
CRYPTO_HASHES = {ALG_SHA1: hashes.SHA1, ALG_SHA256: hashes.SHA256,
                 ALG_SHA384: hashes.SHA384, ALG_SHA512: hashes.SHA512}
BANKS = {"sha1": ALG_SHA1, "sha256": ALG_SHA256, "sha384": ALG_SHA384, "sha512": ALG_SHA512}

FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN = 0x2, 0x10, 0x20
RESTRICTED, DECRYPT, SIGN = 0x10000, 0x20000, 0x40000

GENERATED = 0xFF544347
ST_ATTEST_CERTIFY, ST_ATTEST_QUOTE = 0x8017, 0x8018


class Refused(Exception):
    """A check failed; str() says which (the 403's detail)."""


class Reader:
    def __init__(self, data: bytes, what: str):
        self.d, self.o, self.what = data, 0, what

    def take(self, n):
        if self.o + n > len(self.d):
            raise Refused("%s is truncated" % self.what)
        b = self.d[self.o:self.o + n]
        self.o += n
        return b

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def tpm2b(self):
        return self.take(self.u16())

    def end(self):
        if self.o != len(self.d):
            raise Refused("%s has %d trailing bytes" % (self.what, len(self.d) - self.o))


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class Public:
    """A TPM2B_PUBLIC: type, nameAlg, attributes, and for RSA n and e."""

    def __init__(self, data: bytes, what: str):
        outer = Reader(data, what)
        self.area = outer.tpm2b()
        outer.end()
        r = Reader(self.area, what)
        self.type, self.name_alg, self.attrs = r.u16(), r.u16(), r.u32()
        self.auth_policy = r.tpm2b()
        if self.name_alg not in HASHES:
            raise Refused("%s has an unknown name algorithm 0x%04x" % (what, self.name_alg))
        self.sym_alg = r.u16()
        self.sym_bits = self.sym_mode = 0
        if self.sym_alg != ALG_NULL:
            self.sym_bits, self.sym_mode = r.u16(), r.u16()
        self.scheme = r.u16()
        self.scheme_hash = r.u16() if self.scheme != ALG_NULL else ALG_NULL
        if self.type == ALG_RSA:
            self.key_bits, exp = r.u16(), r.u32()
            self.e = exp or 65537
            self.n = int.from_bytes(r.tpm2b(), "big")
        elif self.type == ALG_ECC:
            self.curve = r.u16()
            kdf = r.u16()
            if kdf != ALG_NULL:
                r.u16()
            self.x, self.y = r.tpm2b(), r.tpm2b()
        else:
            raise Refused("%s is neither an RSA nor an ECC key" % what)
        r.end()
        self.name = struct.pack(">H", self.name_alg) + HASHES[self.name_alg](self.area).digest()

    def has(self, bits: int) -> bool:
        return self.attrs & bits == bits

    def rsa_key(self, what):
        if self.type != ALG_RSA:
            raise Refused("%s is not an RSA key" % what)
        return rsa.RSAPublicNumbers(self.e, self.n).public_key()


class Attest:
    """A TPM2B_ATTEST: type, extraData, and what it attests."""

    def __init__(self, data: bytes, what: str):
        outer = Reader(data, what)
        self.body = outer.tpm2b()
        outer.end()
        r = Reader(self.body, what)
        if r.u32() != GENERATED:
            raise Refused("%s was not made by a TPM (magic)" % what)
        self.type = r.u16()
        r.tpm2b()                      # qualifiedSigner
        self.extra = r.tpm2b()
        r.take(17 + 8)                 # clockInfo, firmwareVersion
        if self.type == ST_ATTEST_CERTIFY:
            self.name, self.qualified_name = r.tpm2b(), r.tpm2b()
        elif self.type == ST_ATTEST_QUOTE:
            self.selection = []
            for _ in range(r.u32()):
                alg, size = r.u16(), r.u8()
                bits = r.take(size)
                self.selection.append((alg, [i for i in range(8 * size)
                                             if bits[i // 8] >> (i % 8) & 1]))
            self.pcr_digest = r.tpm2b()
        else:
            raise Refused("%s is of type 0x%04x, not a certify or a quote" % (what, self.type))
        r.end()


def check_signature(ak: Public, sig: bytes, signed: bytes, what: str):
    r = Reader(sig, what + "'s signature")
    alg, halg = r.u16(), r.u16()
    value = r.tpm2b()
    r.end()
    if alg not in (ALG_RSASSA, ALG_RSAPSS) or halg not in CRYPTO_HASHES:
        raise Refused("%s's signature is not RSASSA or RSAPSS with a known hash" % what)
    h = CRYPTO_HASHES[halg]()
    pad = (padding.PKCS1v15() if alg == ALG_RSASSA else
           padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO))
    try:
        ak.rsa_key("the AK").verify(value, signed, pad, h)
    except InvalidSignature:
        raise Refused("the AK's signature over %s does not verify" % what)


# ---- the EK certificate ------------------------------------------------------

def load_bundle(path: str) -> list:
    with open(path, "rb") as f:
        text = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    certs = [x509.load_pem_x509_certificate(marker + part)
             for part in text.split(marker)[1:]]
    if not certs:
        raise SystemExit("resource_api: %s holds no certificate" % path)
    return certs


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """The signature of cert verifies with ca's key (python3-cryptography 38 has no
    verify_directly_issued_by)."""
    key = ca.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                       cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes,
                       ec.ECDSA(cert.signature_hash_algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_ek_cert(der: bytes, bundle: list) -> x509.Certificate:
    """The certificate, when it chains to a self-signed CA of the bundle."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise Refused("ek_cert is not a DER X.509 certificate")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    cur, seen = cert, 0
    while True:
        if not cur.not_valid_before <= now <= cur.not_valid_after:
            raise Refused("the EK certificate chain holds an expired or not yet valid "
                          "certificate (%s)" % cur.subject.rfc4514_string())
        issuer = None
        for ca in bundle:
            if ca.subject != cur.issuer:
                continue
            if not issued_by(cur, ca):
                continue
            issuer = ca
            break
        if issuer is None:
            raise Refused("the EK certificate does not chain to a trusted TPM manufacturer "
                          "CA (issuer %s)" % cur.issuer.rfc4514_string())
        try:
            bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise Refused("the EK certificate's issuer %s is not a CA"
                          % issuer.subject.rfc4514_string())
        if issuer.subject == issuer.issuer:
            return cert
        cur, seen = issuer, seen + 1
        if seen > 8:
            raise Refused("the EK certificate chain is too long")


CURVES = {0x0003: ec.SECP256R1, 0x0004: ec.SECP384R1}


def check_ek_public(ek: Public, cert: x509.Certificate):
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        same = ek.type == ALG_RSA and ek.n == nums.n and ek.e == nums.e
    elif isinstance(key, ec.EllipticCurvePublicKey):
        nums = key.public_numbers()
        same = (ek.type == ALG_ECC and ek.curve in CURVES
                and key.curve.name == CURVES[ek.curve].name
                and int.from_bytes(ek.x, "big") == nums.x
                and int.from_bytes(ek.y, "big") == nums.y)
    else:
        raise Refused("the EK certificate's key is neither RSA nor ECC")
    if not same:
        raise Refused("ek_public does not hold the EK certificate's key")
    if not ek.has(RESTRICTED | DECRYPT | FIXED_TPM | FIXED_PARENT):
        raise Refused("ek_public is not a restricted decryption key fixed to its TPM")
    if ek.sym_alg != ALG_AES or ek.sym_mode != ALG_CFB:
        raise Refused("ek_public's symmetric algorithm is not AES-CFB")


def check_ak(ak: Public):
    need = RESTRICTED | SIGN | FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN
    if not ak.has(need) or ak.attrs & DECRYPT:
        raise Refused("ak_public is not a restricted signing key with fixedTPM, fixedParent "
                      "and sensitiveDataOrigin")
    ak.rsa_key("ak_public")


# ---- TPM2_MakeCredential -----------------------------------------------------

def kdfa(halg: int, key: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> bytes:
    h = HASHES[halg]
    out, i = b"", 1
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", i) + label + b"\0" + u + v +
                        struct.pack(">I", bits), h).digest()
        i += 1
    return out[:bits // 8]


def kdfe(halg: int, z: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> bytes:
    out, i = b"", 1
    while len(out) * 8 < bits:
        out += HASHES[halg](struct.pack(">I", i) + z + label + b"\0" + u + v).digest()
        i += 1
    return out[:bits // 8]


def make_credential(ek: Public, ak_name: bytes, secret: bytes):
    """(credential_blob, encrypted_secret), both with their size fields."""
    halg = ek.name_alg
    dsize = HASHES[halg]().digest_size
    if ek.type == ALG_RSA:
        seed = os.urandom(dsize)
        enc = ek.rsa_key("ek_public").encrypt(
            seed, padding.OAEP(mgf=padding.MGF1(CRYPTO_HASHES[halg]()),
                               algorithm=CRYPTO_HASHES[halg](), label=b"IDENTITY\0"))
    else:
        # The seed from an ephemeral ECDH with the EK (KDFe), the point sent.
        curve = CURVES[ek.curve]()
        size = (curve.key_size + 7) // 8
        peer = ec.EllipticCurvePublicNumbers(int.from_bytes(ek.x, "big"),
                                             int.from_bytes(ek.y, "big"), curve).public_key()
        eph = ec.generate_private_key(curve)
        z = eph.exchange(ec.ECDH(), peer)
        pn = eph.public_key().public_numbers()
        ex, ey = pn.x.to_bytes(size, "big"), pn.y.to_bytes(size, "big")
        seed = kdfe(halg, z, b"IDENTITY", ex, ek.x, dsize * 8)
        enc = tpm2b(ex) + tpm2b(ey)
    sym = kdfa(halg, seed, b"STORAGE", ak_name, b"", ek.sym_bits)
    c = Cipher(algorithms.AES(sym), modes.CFB(b"\0" * 16)).encryptor()
    enc_identity = c.update(tpm2b(secret)) + c.finalize()
    hkey = kdfa(halg, seed, b"INTEGRITY", b"", b"", dsize * 8)
    outer = hmac.new(hkey, enc_identity + ak_name, HASHES[halg]).digest()
    return tpm2b(tpm2b(outer) + enc_identity), tpm2b(enc)


# ---- the proof ---------------------------------------------------------------

def check_certify(ak: Public, info: bytes, sig: bytes, nonce: bytes, dk: Public):
    att = Attest(info, "certify_info")
    check_signature(ak, sig, att.body, "certify_info")
    if att.type != ST_ATTEST_CERTIFY:
        raise Refused("certify_info is not a TPM2_Certify")
    if not hmac.compare_digest(att.extra, nonce):
        raise Refused("certify_info does not carry the challenge's nonce")
    if att.name != dk.name:
        raise Refused("certify_info certifies another key than dk_public")
    if not dk.has(FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN):
        raise Refused("dk_public lacks fixedTPM, fixedParent or sensitiveDataOrigin")


def check_quote(ak: Public, quote: dict, nonce: bytes, b64d) -> dict:
    """The quoted PCR values {bank: {index: hex}}, once every check passed."""
    if not isinstance(quote, dict) or not isinstance(quote.get("pcrs"), dict):
        raise Refused("quote needs info, signature and pcrs")
    att = Attest(b64d(quote.get("info"), "quote.info"), "quote.info")
    check_signature(ak, b64d(quote.get("signature"), "quote.signature"), att.body, "quote.info")
    if att.type != ST_ATTEST_QUOTE:
        raise Refused("quote.info is not a TPM2_Quote")
    if not hmac.compare_digest(att.extra, nonce):
        raise Refused("quote.info does not carry the challenge's nonce")
    names = {v: k for k, v in BANKS.items()}
    cat, pcrs = b"", {}
    for alg, indices in att.selection:
        bank = quote["pcrs"].get(names.get(alg, "?"))
        if not isinstance(bank, dict):
            raise Refused("quote.pcrs lacks the bank the quote selects")
        for i in indices:
            try:
                cat += bytes.fromhex(bank[str(i)])
            except (KeyError, TypeError, ValueError):
                raise Refused("quote.pcrs lacks PCR %d of a quoted bank" % i)
        pcrs[names[alg]] = {str(i): bank[str(i)] for i in indices}
    if not hmac.compare_digest(hashlib.sha256(cat).digest(), att.pcr_digest):
        raise Refused("quote.pcrs are not the values the quote signed")
    return pcrs


def pem_modulus(pem: str):
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise Refused("public_key is not a PEM public key")
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused("public_key is not an RSA key")
    return key
