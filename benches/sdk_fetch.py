#!/usr/bin/env python3
"""The official Python SDK, as a user would script it: a credential + SecretClient, every
object fetched concurrently with a ThreadPoolExecutor, each value written to OUTDIR/NAME.

    sdk_fetch.py MODE OUTDIR NAME [NAME...]

MODE: `pod` → ManagedIdentityCredential(client_id=<pod identity>) (in a cluster with
aad-pod-identity the SDK's IMDS call is intercepted by NMI; here the emulator's IMDS answers
for that identity), `node` → ManagedIdentityCredential() (system-assigned, IMDS),
`sp` → ClientSecretCredential. Workers: min(N, 32). Challenge-resource verification stays on.
Prints one JSON line: {"import_ms": ..., "fetch_ms": ...} (fetch = client construction to the
last file written; import = loading azure-identity + azure-keyvault-secrets).

Only ever run this inside the emulator's network namespace (benches/run does).
"""

import time

_t_import = time.perf_counter()
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from azure.identity import ClientSecretCredential, ManagedIdentityCredential  # noqa: E402
from azure.keyvault.secrets import SecretClient  # noqa: E402

import_ms = (time.perf_counter() - _t_import) * 1000.0

TENANT = "11111111-2222-3333-4444-555555555555"
POD_MI = "00000000-0000-0000-0000-00000000a003"
SP_ID = "00000000-0000-0000-0000-00000000a004"
SP_SECRET = "emulator-sp-secret"
VAULT = "https://kvdemo.vault.azure.net"
API = "2025-07-01"  # newest the emulator serves; the SDK's default may be newer



def _refuse_outside_emulator_namespace() -> None:
    """Azure's real host names are served only by the emulator inside a loopback-only netns."""
    devices = [l.split(":")[0].strip() for l in open("/proc/self/net/dev").read().splitlines()[2:]]
    if devices != ["lo"]:
        sys.exit("refusing to run outside the emulator's network namespace (use benches/run)")


def main() -> None:
    _refuse_outside_emulator_namespace()
    mode, outdir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    for var in ("MSI_ENDPOINT", "IDENTITY_ENDPOINT", "AZURE_CLIENT_ID",
                "AZURE_POD_IDENTITY_AUTHORITY_HOST", "HTTP_PROXY", "HTTPS_PROXY",
                "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    # urllib3 warns "Connection pool is full" past 10 connections per host; keep output clean.
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    if mode == "pod":
        cred = ManagedIdentityCredential(client_id=POD_MI)
    elif mode == "node":
        cred = ManagedIdentityCredential()
    elif mode == "sp":
        cred = ClientSecretCredential(TENANT, SP_ID, SP_SECRET)
    else:
        raise SystemExit(f"unknown mode {mode}")
    client = SecretClient(VAULT, cred, api_version=API)

    def one(name: str) -> None:
        value = client.get_secret(name).value
        with open(os.path.join(outdir, name), "w") as f:
            f.write(value)

    with ThreadPoolExecutor(max_workers=min(len(names), 32)) as pool:
        for f in [pool.submit(one, n) for n in names]:
            f.result()
    print(json.dumps({"import_ms": import_ms, "fetch_ms": (time.perf_counter() - t0) * 1000.0}))


if __name__ == "__main__":
    main()
