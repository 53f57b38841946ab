#!/usr/bin/env python3
"""Inner driver of benches/run: runs INSIDE the emulator's network namespace (scripts/netns-run).

    inner.py PLAN.json

Loops over tools × identity modes × object counts × repetitions as PLAN says, spawning each
process directly (subprocess.Popen + os.wait4, so CPU time and peak RSS are the child's own),
attributes the emulator's request-log lines to each run by file offset, and writes every
sample to PLAN["out"] as JSON. benches/run aggregates and prints; this script prints progress
to stderr only.
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
TOKEN_ENDPOINTS = ("nmi", "imds", "aad")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class RequestLog:
    """The emulator's JSON-lines request log, read by byte offset."""

    def __init__(self, path: str):
        self.path = path

    def offset(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def lines(self, start: int, end: int) -> list:
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        return [json.loads(l) for l in data.decode().splitlines() if l.strip()]


def summarize_requests(lines: list) -> dict:
    counts, statuses = {}, {}
    for l in lines:
        ep = l.get("endpoint", "?")
        counts[ep] = counts.get(ep, 0) + 1
        key = f"{ep}:{l.get('status')}"
        statuses[key] = statuses.get(key, 0) + 1
    return {"counts": counts, "statuses": statuses}


SPAWN = None  # benches/spawn.c, built by benches/run


def spawn(argv: list, env: dict) -> dict:
    """Runs argv under benches/spawn (fork + exec + wait4 from a ~100 KiB static parent, so
    ru_maxrss is the child's own: a child of this interpreter would inherit its high-water
    mark through execve). Wall = fork to reaped exit, measured by spawn itself."""
    rfd, wfd = os.pipe()
    try:
        p = subprocess.Popen([SPAWN, str(wfd)] + argv, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             pass_fds=(wfd,))
        os.close(wfd)
        wfd = -1
        out, err = p.communicate()
        with os.fdopen(rfd, "r") as f:
            rfd = -1
            fields = f.read().split()
    finally:
        for fd in (rfd, wfd):
            if fd >= 0:
                os.close(fd)
    if p.returncode != 0 or len(fields) != 5:
        raise SystemExit(f"spawn failed for {argv[:2]}: rc={p.returncode} {err[-500:]!r}")
    wall_ns, user_us, sys_us, rss, status = (int(x) for x in fields)
    return {"wall_ms": wall_ns / 1e6, "cpu_ms": (user_us + sys_us) / 1000.0,
            "user_ms": user_us / 1000.0, "sys_ms": sys_us / 1000.0, "rss_kib": rss,
            "rc": os.waitstatus_to_exitcode(status),
            "stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace")}


class Bench:
    def __init__(self, plan: dict):
        self.plan = plan
        self.latency = plan["latency"]
        self.work = plan["workdir"]
        self.reqlog = RequestLog(os.environ["KV_EMULATOR_REQUEST_LOG"])
        plugin = os.path.join(self.work, "plugins", "azure~kv")
        os.makedirs(plugin, exist_ok=True)
        self.kv = os.path.join(plugin, "kv")
        shutil.copy2(plan["kv"], self.kv)
        self.state = os.path.join(self.work, "state")
        with open(os.path.join(plugin, "kv.json"), "w") as f:
            # The node token cache on, as shipped: a cold mount is measured with the cache
            # emptied first (the first mount on the node), a warm one right after it, with the
            # token it cached. The node identity allowed (kv refuses it without a policy).
            json.dump({"stateDir": self.state, "policy": {"nodeIdentities": {"*": ["*"]}}}, f)
        self.kv_log = os.path.join(self.work, "kv-driver.log")
        self.env = dict(os.environ, KV_LOG_FILE=self.kv_log)
        self.samples = []
        self.violations = []
        self.seq = 0
        # Runs whose request-log segment is not read yet: (sample, start offset).
        self.pending = None

    # --- request-log attribution ---------------------------------------------------------
    def _begin(self, sample: dict) -> None:
        """Closes the previous run's log segment at the current offset, opens this one."""
        end = self.reqlog.offset()
        if self.pending is not None:
            prev, start = self.pending
            prev.update(summarize_requests(self.reqlog.lines(start, end)))
            self._check(prev)
        self.pending = (sample, end)

    def flush(self) -> None:
        time.sleep(0.2)
        self._begin({})
        self.pending = None

    def _check(self, s: dict) -> None:
        """Request plan invariant for kv mounts: cold, 1 token + ≤ 1 challenge (one vault) + N;
        warm (the token cached), N and nothing else."""
        if s.get("tool") == "kv-warm":
            return self._check_warm(s)
        if s.get("tool") != "kv" or s.get("case") == "init":
            return
        st, c = s["statuses"], s["counts"]
        n = s["n"]
        tok_ok = sum(st.get(f"{ep}:200", 0) for ep in TOKEN_ENDPOINTS)
        tok_all = sum(c.get(ep, 0) for ep in TOKEN_ENDPOINTS)
        kv_200 = st.get("keyvault:200", 0)
        kv_401 = st.get("keyvault:401", 0)
        kv_all = c.get("keyvault", 0)
        faults = s.get("faults_expected", 0)
        problems = []
        if tok_ok != 1:
            problems.append(f"{tok_ok} successful token requests (want 1)")
        if s.get("case") != "pending" and tok_all != 1:
            problems.append(f"{tok_all} token requests (want 1)")
        lists = s.get("lists_expected", 0)
        if kv_200 != n + lists:
            problems.append(f"{kv_200} Key Vault 200s (want N={n} + list pages {lists})")
        if kv_401 > 1:
            problems.append(f"{kv_401} challenges (want ≤ 1 for one vault)")
        if kv_all != n + lists + kv_401 + faults:
            problems.append(f"{kv_all} Key Vault requests (want N + list pages + challenges + injected faults = {n + lists + kv_401 + faults})")
        if problems:
            self.violations.append({"case": s.get("case"), "mode": s.get("mode"), "n": n,
                                    "latency": self.latency, "seq": s.get("seq"),
                                    "problems": problems, "statuses": st})

    def _check_warm(self, s: dict) -> None:
        st, c = s["statuses"], s["counts"]
        n = s["n"]
        problems = []
        tok_all = sum(c.get(ep, 0) for ep in TOKEN_ENDPOINTS)
        if tok_all:
            problems.append(f"{tok_all} token requests (want 0: the token is cached)")
        if st.get("keyvault:401", 0):
            problems.append(f"{st['keyvault:401']} challenges (want 0: the token is cached)")
        if st.get("keyvault:200", 0) != n or c.get("keyvault", 0) != n:
            problems.append(f"{c.get('keyvault', 0)} Key Vault requests, {st.get('keyvault:200', 0)} 200s (want N={n})")
        if problems:
            self.violations.append({"case": "warm", "mode": s.get("mode"), "n": n,
                                    "latency": self.latency, "seq": s.get("seq"),
                                    "problems": problems, "statuses": st})

    # --- tools ---------------------------------------------------------------------------
    def kv_options(self, mode: str, names: list, objects: list = None) -> dict:
        o = {"keyvaultname": "kvdemo",
             "kubernetes.io/pod.name": "demo-pod", "kubernetes.io/pod.namespace": "demo",
             "kubernetes.io/fsType": "", "kubernetes.io/readwrite": "rw",
             "kubernetes.io/serviceAccount.name": "default"}
        if objects is None:
            o["keyvaultobjectnames"] = ";".join(names)
            o["keyvaultobjecttypes"] = ";".join(["secret"] * len(names))
        else:
            o["objects"] = json.dumps(objects)
        if mode == "pod":
            o["usepodidentity"] = "true"
        elif mode == "node":
            o["usevmmanagedidentity"] = "true"
        elif mode == "sp":
            o["tenantid"] = TENANT
            o["kubernetes.io/secret/clientid"] = b64(SP_ID)
            o["kubernetes.io/secret/clientsecret"] = b64(SP_SECRET)
        return o

    def volume_dir(self, uid: str = None) -> tuple:
        self.seq += 1
        uid = uid or f"{self.seq:08x}-bench-uid"
        d = os.path.join(self.work, "kubelet", "pods", uid, "volumes", "azure~kv", "bench")
        os.makedirs(d)
        os.chmod(d, 0o750)
        return d, uid

    def run_kv(self, mode: str, names: list, case: str, objects: list = None,
               warm_uid: str = None, **extra) -> dict:
        """One `kv mount` + unmount of `names` (or of what the `objects` entries select:
        `names` are the expected matches). Cold (default): the node's token cache emptied
        first, as on the first mount of the node. Warm: `warm_uid` is the pod of the cold mount
        just before (pod identity tokens are cached per pod), whose token is in the cache."""
        if warm_uid is None:
            shutil.rmtree(os.path.join(self.state, "tokens"), ignore_errors=True)
        d, uid = self.volume_dir(warm_uid)
        opts = self.kv_options(mode, names, objects)
        opts["kubernetes.io/pod.uid"] = uid
        opts["kubernetes.io/pvOrVolumeName"] = "bench"
        sample = {"tool": "kv" if warm_uid is None else "kv-warm", "mode": mode, "n": len(names),
                  "latency": self.latency, "case": case, "seq": self.seq, "uid": uid, **extra}
        self._begin(sample)
        r = spawn([self.kv, "mount", d, json.dumps(opts)], self.env)
        reply = r["stdout"].strip()
        try:
            status = json.loads(reply).get("status")
        except ValueError:
            status = None
        sample.update({k: r[k] for k in ("wall_ms", "cpu_ms", "user_ms", "sys_ms", "rss_kib")})
        # Per-step timings from the driver log (elapsed_ms since the logger started).
        steps = {}
        try:
            with open(self.kv_log) as f:
                for line in f:
                    ev = json.loads(line)
                    if ev.get("verb") != "mount":
                        continue
                    e = ev.get("event")
                    if e in ("mount_start", "token", "mounted", "reply"):
                        steps[e] = ev.get("elapsed_ms")
                        if e == "token":
                            steps["token_ms"] = ev.get("ms")
                    elif e == "fetched":
                        steps["last_fetched"] = ev.get("elapsed_ms")
                        steps["first_fetched"] = min(steps.get("first_fetched", 1e9), ev.get("elapsed_ms", 1e9))
        except (FileNotFoundError, ValueError):
            pass
        sample["steps"] = steps
        written = len(os.listdir(d)) if status == "Success" else 0
        if status == "Success" and written != len(names):
            self.violations.append({"case": case, "mode": mode, "n": len(names),
                                    "latency": self.latency, "seq": self.seq,
                                    "problems": [f"mount wrote {written} files (want {len(names)})"]})
        if status != "Success" or r["stderr"]:
            self.violations.append({"case": case, "mode": mode, "n": len(names),
                                    "latency": self.latency, "seq": self.seq,
                                    "problems": [f"mount reply {reply!r} stderr {r['stderr']!r}"]})
        u = spawn([self.kv, "unmount", d], self.env)
        if '"Success"' not in u["stdout"]:
            self.violations.append({"case": case, "mode": mode, "n": len(names),
                                    "latency": self.latency, "seq": self.seq,
                                    "problems": [f"unmount reply {u['stdout']!r}"]})
        with open(self.kv_log, "w"):
            pass  # truncate: the next mount's steps only
        shutil.rmtree(os.path.join(self.work, "kubelet", "pods", uid), ignore_errors=True)
        self.samples.append(sample)
        return sample

    def run_script(self, tool: str, mode: str, names: list) -> dict:
        script = os.path.join(self.plan["bench_dir"],
                              "baseline_sequential.py" if tool == "baseline" else "sdk_fetch.py")
        self.seq += 1
        out = os.path.join(self.work, f"out-{self.seq}")
        os.makedirs(out)
        sample = {"tool": tool, "mode": mode, "n": len(names), "latency": self.latency,
                  "case": "grid", "seq": self.seq}
        self._begin(sample)
        r = spawn([sys.executable, script, mode, out] + names, self.env)
        sample.update({k: r[k] for k in ("wall_ms", "cpu_ms", "user_ms", "sys_ms", "rss_kib")})
        try:
            sample["script"] = json.loads(r["stdout"].strip().splitlines()[-1])
        except (ValueError, IndexError):
            sample["script"] = {}
        written = len(os.listdir(out))
        if r["rc"] != 0 or written != len(names):
            self.violations.append({"case": tool, "mode": mode, "n": len(names),
                                    "latency": self.latency, "seq": self.seq,
                                    "problems": [f"{tool} rc={r['rc']} wrote {written}/{len(names)}: {r['stderr'][-500:]}"]})
        shutil.rmtree(out, ignore_errors=True)
        self.samples.append(sample)
        return sample

    def run_init(self, reps: int) -> None:
        for _ in range(reps):
            r = spawn([self.kv, "init"], self.env)
            ok = '"Success"' in r["stdout"]
            self.samples.append({"tool": "kv", "case": "init", "latency": self.latency,
                                 "wall_ms": r["wall_ms"], "cpu_ms": r["cpu_ms"],
                                 "rss_kib": r["rss_kib"], "ok": ok})
            if not ok:
                self.violations.append({"case": "init", "problems": [f"init reply {r['stdout']!r}"]})

    # --- plan ----------------------------------------------------------------------------
    def grid(self) -> None:
        p = self.plan
        for n in p["objects"]:
            names = [f"bench-{i:03d}" for i in range(n)]
            for mode in p["modes"]:
                for tool in p["tools"]:
                    reps = p["reps"][tool][str(n)]
                    log(f"lat={self.latency} N={n} mode={mode} {tool} ×{reps}")
                    for _ in range(reps):
                        if tool == "kv":
                            cold = self.run_kv(mode, names, "grid")
                            self.run_kv(mode, names, "grid", warm_uid=cold["uid"])
                        else:
                            self.run_script(tool, mode, names)

    def retries(self) -> None:
        r = self.plan["retry"]
        base = [f"bench-{i:03d}" for i in range(r["n"] - 1)]
        for kind in ("500", "429"):
            log(f"lat={self.latency} retry {kind} N={r['n']} ×{r['reps']}")
            for i in range(r["reps"]):
                # The faulted object goes last: the first object's request is the challenge.
                self.run_kv(r["mode"], base + [f"r{kind}-{i:02d}"], f"retry{kind}", faults_expected=1)
        # Same mount without a fault, measured right after, as the reference.
        log(f"lat={self.latency} retry reference N={r['n']} ×{r['reps']}")
        for i in range(r["reps"]):
            self.run_kv(r["mode"], [f"bench-{j:03d}" for j in range(r["n"])], "retry_ref")

    def selection(self) -> None:
        """100 secrets selected by `objectNamePattern` (the vault listed page by page, then one
        GET per match), and the same 100 named, measured alternately."""
        p = self.plan["selection"]
        names = [f"bench-{i:03d}" for i in range(100)]
        entry = [{"objectNamePattern": "bench-0[0-9][0-9]", "objectType": "secret"}]
        log(f"lat={self.latency} selection of 100 ({p['pages']} list pages) and 100 named ×{p['reps']}")
        for _ in range(p["reps"]):
            self.run_kv(p["mode"], names, "selection", objects=entry, lists_expected=p["pages"])
            self.run_kv(p["mode"], names, "selection_ref")

    def pending_nmi(self) -> None:
        p = self.plan["pending"]
        ready = os.path.join(os.path.dirname(os.environ["KV_EMULATOR_REQUEST_LOG"]), "ready")
        since_ready_ms = (time.time() - os.path.getmtime(ready)) * 1000.0
        s = self.run_kv("pod", [f"bench-{i:03d}" for i in range(p["n"])], "pending",
                        since_ready_ms=since_ready_ms)
        log(f"pending: mount started {since_ready_ms:.0f} ms after the emulator was ready, took {s['wall_ms']:.0f} ms")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    global SPAWN
    plan = json.load(open(sys.argv[1]))
    SPAWN = plan["spawn"]
    b = Bench(plan)
    if plan.get("pending"):
        b.pending_nmi()
    else:
        if plan.get("init_reps"):
            b.run_init(plan["init_reps"])
        b.grid()
        if plan.get("retry"):
            b.retries()
        if plan.get("selection"):
            b.selection()
    b.flush()
    with open(plan["out"], "w") as f:
        json.dump({"samples": b.samples, "violations": b.violations}, f)


if __name__ == "__main__":
    main()
