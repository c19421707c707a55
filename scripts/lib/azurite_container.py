#!/usr/bin/env python3
"""Creates a container on Azurite with a SharedKey-signed request (Azurite checks signatures).

usage: azurite_container.py ENDPOINT CONTAINER   (ENDPOINT like http://127.0.0.1:20000/devstoreaccount1)
Exit 0 when the container exists afterwards (201 created or 409 already there).
"""
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-08-06"

def main(endpoint: str, container: str) -> int:
    date = formatdate(usegmt=True)
    canonical_headers = f"x-ms-date:{date}\nx-ms-version:{VERSION}\n"
    canonical_resource = f"/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
    # Verb, Content-Encoding, -Language, -Length (empty for 0), -MD5, Content-Type, Date, If-Modified-Since,
    # If-Match, If-None-Match, If-Unmodified-Since, Range; then the canonical headers and resource.
    standard = ["PUT", "", "", "", "", "application/octet-stream", "", "", "", "", "", ""]
    to_sign = "\n".join(standard) + "\n" + canonical_headers + canonical_resource
    signature = base64.b64encode(hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()).decode()
    req = urllib.request.Request(f"{endpoint}/{container}?restype=container", method="PUT", data=b"")
    req.add_header("Content-Type", "application/octet-stream")
    req.add_header("x-ms-date", date)
    req.add_header("x-ms-version", VERSION)
    req.add_header("Authorization", f"SharedKey {ACCOUNT}:{signature}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return 0 if resp.status == 201 else 1
    except urllib.error.HTTPError as e:
        if e.code == 409:
            return 0
        print(f"azurite: creating container {container} failed: {e.code} {e.read()[:300]!r}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
