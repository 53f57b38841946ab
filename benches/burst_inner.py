#!/usr/bin/env python3
"""Inner driver of benches/burst: runs INSIDE the emulator's network namespace (scripts/netns-run).

    burst_inner.py PLAN.json

For each run of PLAN["runs"] (identity mode × concurrency × variant): a fresh plugin dir (its
own kv.json, its own node state dir, so no run sees another's cached tokens), N kubelet-style
`kv mount` processes started at once (variant "sequential": one after another), each timed from
spawn to reaped exit; then the emulator's request-log lines of the run, every volume unmounted,
and a pause so the emulator's rate windows and token buckets refill before the next run.
Writes every run's figures to PLAN["out"] as JSON; progress goes to stderr.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time

TENANT = "11111111-2222-3333-4444-555555555555"
SP_ID = "00000000-0000-0000-0000-00000000a004"
SP_SECRET = "emulator-sp-secret"
TOKEN_ENDPOINT = {"node": "imds", "sp": "aad", "pod": "nmi"}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def log(msg: str) -> None:
    print(f"[burst {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def request_lines(path: str, start: int) -> list:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    return [json.loads(l) for l in data.decode().splitlines() if l.strip()]


def options(mode: str, i: int, objects: list, uid: str) -> dict:
    o = {"keyvaultname": "kvdemo", "keyvaultobjectnames": ";".join(objects),
         "keyvaultobjecttypes": ";".join(["secret"] * len(objects)),
         "kubernetes.io/fsType": "", "kubernetes.io/readwrite": "rw",
         "kubernetes.io/pvOrVolumeName": "bench", "kubernetes.io/pod.uid": uid,
         "kubernetes.io/serviceAccount.name": "default",
         "kubernetes.io/pod.name": f"pod-{i:03d}", "kubernetes.io/pod.namespace": "demo"}
    if mode == "node":
        o["usevmmanagedidentity"] = "true"
    elif mode == "sp":
        o.update({"tenantid": TENANT, "kubernetes.io/secret/clientid": b64(SP_ID),
                  "kubernetes.io/secret/clientsecret": b64(SP_SECRET)})
    else:
        o["usepodidentity"] = "true"
    return o


def run_one(plan: dict, run: dict, index: int) -> dict:
    work = os.path.join(plan["workdir"], f"run-{index:03d}")
    plugin = os.path.join(work, "plugins", "azure~kv")
    os.makedirs(plugin)
    kv = os.path.join(plugin, "kv")
    shutil.copy2(plan["kv"], kv)
    config = {"stateDir": os.path.join(work, "state"),
              "policy": {"nodeIdentities": {"*": ["*"]}}}
    if run["variant"] == "nocache":
        config["tokenCache"] = False
    if plan.get("vault_requests"):
        config["vaultRequestsPerNode"] = plan["vault_requests"]
    with open(os.path.join(plugin, "kv.json"), "w") as f:
        json.dump(config, f)
    env = dict(os.environ, KV_LOG_FILE=os.path.join(work, "kv-driver.log"))
    n = run["n"]
    mounts = []
    for i in range(n):
        uid = f"{index:03d}{i:05d}-0000-4000-8000-000000000000"
        d = os.path.join(work, "kubelet", "pods", uid, "volumes", "azure~kv", "bench")
        os.makedirs(d, mode=0o750)
        mounts.append((d, json.dumps(options(run["mode"], i, plan["objects"], uid))))
    reqlog = os.environ["KV_EMULATOR_REQUEST_LOG"]
    start_offset = os.path.getsize(reqlog) if os.path.exists(reqlog) else 0

    def spawn(d: str, opts: str) -> subprocess.Popen:
        return subprocess.Popen([kv, "mount", d, opts], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    began = time.monotonic()
    started, ended, procs, cpu = {}, {}, {}, {}

    def reap() -> None:
        # Reap in exit order: the exit time is when wait returns, whichever child it is.
        pid, status, usage = os.wait4(-1, 0)
        if pid in procs:
            ended[pid] = time.monotonic()
            cpu[pid] = (usage.ru_utime + usage.ru_stime) * 1000.0
            procs[pid].returncode = os.waitstatus_to_exitcode(status)

    for d, opts in mounts:
        t = time.monotonic()
        p = spawn(d, opts)
        started[p.pid], procs[p.pid] = t, p
        if run["variant"] == "sequential":
            reap()
    spawned_ms = (max(started.values()) - began) * 1000.0
    while len(ended) < len(procs):
        reap()
    total_ms = (max(ended.values()) - began) * 1000.0
    walls, failed, errors = [], 0, {}
    for pid, p in procs.items():
        out = p.stdout.read().decode(errors="replace").strip()
        err = p.stderr.read().decode(errors="replace").strip()
        p.stdout.close()
        p.stderr.close()
        walls.append((ended[pid] - started[pid]) * 1000.0)
        try:
            reply = json.loads(out)
        except ValueError:
            reply = {"status": "?", "message": out[:200]}
        if reply.get("status") != "Success" or err:
            failed += 1
            msg = (reply.get("message") or err)[:160]
            errors[msg] = errors.get(msg, 0) + 1
    time.sleep(0.3)  # the emulator writes its log line after answering
    lines = request_lines(reqlog, start_offset)
    token_ep = TOKEN_ENDPOINT[run["mode"]]
    result = dict(run)
    result.update({
        "total_ms": total_ms,
        "spawned_ms": spawned_ms,
        "cpu_ms": sorted(cpu.values()),
        "walls_ms": sorted(walls),
        "failed": failed,
        "errors": errors,
        "token_requests": sum(1 for l in lines if l.get("endpoint") == token_ep),
        "token_429": sum(1 for l in lines if l.get("endpoint") == token_ep and l.get("status") == 429),
        "vault_requests": sum(1 for l in lines if l.get("endpoint") == "keyvault"),
        "vault_429": sum(1 for l in lines if l.get("endpoint") == "keyvault" and l.get("status") == 429),
        "all_429": sum(1 for l in lines if l.get("status") == 429),
    })
    # Unmount everything (in parallel batches) so the next run starts on a clean node.
    for batch in range(0, n, 50):
        ps = [subprocess.Popen([kv, "unmount", d], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
              for d, _ in mounts[batch:batch + 50]]
        for p in ps:
            p.wait()
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    plan = json.load(open(sys.argv[1]))
    os.makedirs(plan["workdir"], exist_ok=True)
    results = []
    for index, run in enumerate(plan["runs"]):
        r = run_one(plan, run, index)
        log(f"{run['mode']:4} N={run['n']:3} {run['variant']:10} all mounted in {r['total_ms']:.0f} ms, "
            f"{r['token_requests']} token requests, {r['vault_requests']} vault requests, "
            f"{r['all_429']}×429, {r['failed']} failed")
        results.append(r)
        time.sleep(plan["pause_s"])
    with open(plan["out"], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
