#!/usr/bin/env python3
"""Baseline: what the v0.0.17 driver does — one token, then GET each object in turn.

    baseline_sequential.py MODE OUTDIR NAME [NAME...]

MODE is `pod` (NMI host endpoint with podns/podname headers), `node` (IMDS, system-assigned)
or `sp` (AAD client credentials, v1 endpoint, as ADAL did). Objects are fetched one after the
other over a single keep-alive HTTPS connection (HTTP/1.1, like Go's net/http to Key Vault),
with the bearer token sent up front (no 401 challenge), and each value is written to
OUTDIR/NAME. Trusts the CA in SSL_CERT_FILE / REQUESTS_CA_BUNDLE (set by scripts/netns-run).
Prints one JSON line: {"fetch_ms": <time from the first request to the last file written>}.

Only ever run this inside the emulator's network namespace (benches/run does).
"""

import http.client
import json
import os
import ssl
import sys
import time
import urllib.parse

TENANT = "11111111-2222-3333-4444-555555555555"
SP_ID = "00000000-0000-0000-0000-00000000a004"
SP_SECRET = "emulator-sp-secret"
RESOURCE = "https://vault.azure.net"
VAULT_HOST = "kvdemo.vault.azure.net"
API = "2016-10-01"  # the api-version v0.0.17's SDK pinned


def token(mode: str, tls: ssl.SSLContext) -> str:
    if mode == "pod":
        c = http.client.HTTPConnection("127.0.0.1", 2579, timeout=30)
        c.request("GET", "/host/token/?resource=" + urllib.parse.quote(RESOURCE, safe=""),
                  headers={"podns": "demo", "podname": "demo-pod"})
    elif mode == "node":
        c = http.client.HTTPConnection("169.254.169.254", 80, timeout=30)
        c.request("GET", "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
                  + urllib.parse.quote(RESOURCE, safe=""), headers={"Metadata": "true"})
    elif mode == "sp":
        c = http.client.HTTPSConnection("login.microsoftonline.com", 443, timeout=30, context=tls)
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": SP_ID,
                                       "client_secret": SP_SECRET, "resource": RESOURCE})
        c.request("POST", f"/{TENANT}/oauth2/token", body=body,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    else:
        raise SystemExit(f"unknown mode {mode}")
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"token: HTTP {r.status}: {data[:200]!r}")
    doc = json.loads(data)
    if mode == "pod":  # NMI wraps the token: {"token": {...}, "clientid": ...}
        doc = doc["token"]
    return doc["access_token"]



def _refuse_outside_emulator_namespace() -> None:
    """Azure's real host names are served only by the emulator inside a loopback-only netns."""
    devices = [l.split(":")[0].strip() for l in open("/proc/self/net/dev").read().splitlines()[2:]]
    if devices != ["lo"]:
        sys.exit("refusing to run outside the emulator's network namespace (use benches/run)")


def main() -> None:
    _refuse_outside_emulator_namespace()
    mode, outdir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    ca = os.environ.get("SSL_CERT_FILE") or os.environ["REQUESTS_CA_BUNDLE"]
    tls = ssl.create_default_context(cafile=ca)
    t0 = time.perf_counter()
    bearer = token(mode, tls)
    kv = http.client.HTTPSConnection(VAULT_HOST, 443, timeout=30, context=tls)
    for name in names:
        kv.request("GET", f"/secrets/{name}/?api-version={API}",
                   headers={"Authorization": f"Bearer {bearer}"})
        r = kv.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"{name}: HTTP {r.status}: {data[:200]!r}")
        with open(os.path.join(outdir, name), "w") as f:
            f.write(json.loads(data)["value"])
    kv.close()
    print(json.dumps({"fetch_ms": (time.perf_counter() - t0) * 1000.0}))


if __name__ == "__main__":
    main()
