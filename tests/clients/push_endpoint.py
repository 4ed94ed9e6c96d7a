"""A local Web Push endpoint for tests: it plays a browser's push service and user agent.

It makes a user agent key pair and auth secret, prints them with its port as the first line
of JSON, then for every POST checks the VAPID authorization (RFC 8292, ES256 with the
`cryptography` package), decrypts the body (RFC 8291 with `http_ece`) and prints one JSON
line per request. The path says how to answer: /ok/<name> 201, /gone/<name> 410,
/flaky<N>/<name> 503 (Retry-After: 0) for the first N requests, then 201.
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


UA_KEY = ec.generate_private_key(ec.SECP256R1())
AUTH = bytes(range(16)) if "--fixed-auth" in sys.argv else __import__("os").urandom(16)
UA_PUBLIC = UA_KEY.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
)
LOCK = threading.Lock()
SEEN = {}


def check_vapid(header, origin):
    """Returns (ok, k, why)."""
    if not header or not header.startswith("vapid "):
        return False, None, "no vapid authorization"
    fields = dict(p.strip().split("=", 1) for p in header[len("vapid "):].split(","))
    token, k = fields.get("t"), fields.get("k")
    head, claims, sig = token.split(".")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(k))
    raw = b64d(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False, k, "bad signature"
    claims = json.loads(b64d(claims))
    if json.loads(b64d(head)).get("alg") != "ES256":
        return False, k, "alg"
    if claims.get("aud") != origin:
        return False, k, f"aud {claims.get('aud')} != {origin}"
    if not (time.time() < claims.get("exp", 0) <= time.time() + 24 * 3600):
        return False, k, "exp"
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        return False, k, "sub"
    return True, k, None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = self.path.split("/")[1]
        with LOCK:
            SEEN[self.path] = SEEN.get(self.path, 0) + 1
            count = SEEN[self.path]
        if kind == "gone":
            status = 410
        elif kind.startswith("flaky") and count <= int(kind[len("flaky"):]):
            status = 503
        else:
            status = 201
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        ok, k, why = check_vapid(self.headers.get("Authorization"), origin)
        payload, error = None, why
        if self.headers.get("Content-Encoding") != "aes128gcm":
            error = "content-encoding"
        elif not self.headers.get("TTL", "").isdigit():
            error = "no TTL"
        else:
            try:
                plain = http_ece.decrypt(
                    body, private_key=UA_KEY, auth_secret=AUTH, version="aes128gcm"
                )
                payload = json.loads(plain)
            except Exception as e:  # report, never crash the endpoint
                error = f"decrypt: {e}"
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()
        line = {"path": self.path, "status": status, "vapid_ok": ok, "k": k,
                "payload": payload, "error": error}
        with LOCK:
            print(json.dumps(line), flush=True)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"port": server.server_address[1], "p256dh": b64e(UA_PUBLIC),
                      "auth": b64e(AUTH)}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
