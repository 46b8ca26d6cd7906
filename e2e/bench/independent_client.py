#!/usr/bin/env python3
"""An independent load client for Parley, written from PROTOCOL.md alone (not from the
node's code, and sharing nothing with parley-bench), so that the load tool cannot flatter
the node.

N users are online; at a fixed total rate a random user sends a 64-character text to a
random other user (open loop: sends go out on schedule whether or not earlier ones were
answered). Every send's time is in its text, so the recipient times the delivery and the
sender times the ack. Rates are stepped up; a step is *held* when the ack and delivery p99
are under the limit and at least 95 % of the offered sends were acked and delivered.

    pip install picows uvloop orjson
    python3 e2e/bench/independent_client.py --url http://127.0.0.1:8090 --users 1000 \
        --rates 2000,4000,8000,12000,16000 --step-secs 10

Several worker processes share the users (--procs): one asyncio loop per process. Prints
one JSON line per step on stdout (and --json-out), a summary on stderr, and its own CPU per
message, so its cost can be reported beside the node's.
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson
import picows
import uvloop

PASSWORD = "independent-client-pw"


def http(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def make_user(base, name):
    status, _ = http("POST", f"{base}/v1/users", {"username": name, "password": PASSWORD})
    if status not in (201, 409):
        raise SystemExit(f"sign-up of {name} answered {status}")
    status, s = http("POST", f"{base}/v1/sessions",
                     {"username": name, "password": PASSWORD, "device_id": "bench"})
    if status != 200:
        raise SystemExit(f"login of {name} answered {status}: {s}")
    return {"user_id": s["user_id"], "token": s["token"]}


def users(base, n, cache):
    """n users with tokens, from the cache when its tokens still work on this node."""
    known = {}
    if os.path.exists(cache):
        with open(cache) as f:
            known = json.load(f).get(base, {})
    have = known.get("users", [])
    if have:
        status, _ = http("GET", f"{base}/v1/users/me", token=have[0]["token"])
        if status != 200:
            have = []
    if len(have) < n:
        print(f"creating {n - len(have)} users (argon2 on the node: slow)", file=sys.stderr)
        with ThreadPoolExecutor(16) as pool:
            have += list(pool.map(lambda k: make_user(base, f"ic{k}"), range(len(have), n)))
        all_known = {}
        if os.path.exists(cache):
            with open(cache) as f:
                all_known = json.load(f)
        all_known[base] = {"users": have}
        with open(cache, "w") as f:
            json.dump(all_known, f)
    return have[:n]


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Conn(picows.WSListener):
    """One user's socket: counts acks and deliveries, with their latency."""

    def __init__(self, stats):
        self.stats = stats
        self.transport = None

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        if frame.msg_type != picows.WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        v = orjson.loads(frame.get_payload_as_bytes())
        kind = v.get("type")
        if kind == "ack":
            sent = self.stats["pending"].pop(v.get("client_msg_id"), None)
            if sent is not None:
                self.stats["ack"].append((now - sent) / 1e6)
        elif kind == "message":
            text = v.get("text", "")
            if text.startswith("t="):
                sent = int(text[2:text.index(" ")])
                self.stats["deliver"].append((now - sent) / 1e6)
        elif kind == "error":
            self.stats["errors"] += 1
            self.stats["pending"].pop(v.get("client_msg_id"), None)

    def on_ws_disconnected(self, transport):
        self.stats["disconnects"] += 1


async def worker_main(base, my_users, all_ids, text_chars, pipe, seed):
    random.seed(seed)
    stats = {"pending": {}, "ack": [], "deliver": [], "errors": 0, "disconnects": 0}
    conns = []
    for u in my_users:
        status, a = http("GET", f"{base}/v1/assign", token=u["token"])
        _, listener = await picows.ws_connect(
            lambda: Conn(stats), f"{a['ws_url']}?token={u['token']}")
        conns.append((u, listener))
    pipe.send("connected")
    seq = 0
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, pipe.recv)
        if cmd[0] == "stop":
            return
        _, rate, secs = cmd
        stats["ack"].clear()
        stats["deliver"].clear()
        stats["pending"].clear()
        stats["errors"] = 0
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < secs:
            due = int(rate * elapsed) - sent
            for _ in range(due):
                sender, listener = random.choice(conns)
                to = random.choice(all_ids)
                while to == sender["user_id"]:
                    to = random.choice(all_ids)
                seq += 1
                cmid = f"{os.getpid()}-{seq}"
                now = time.monotonic_ns()
                head = f"t={now} "
                text = head + "x" * max(0, text_chars - len(head))
                stats["pending"][cmid] = now
                listener.transport.send(picows.WSMsgType.TEXT, orjson.dumps(
                    {"type": "send", "client_msg_id": cmid, "to": to, "text": text}))
            sent += due
            await asyncio.sleep(0.001)
        # Grace: answers still on their way.
        grace_end = time.monotonic() + 3
        while stats["pending"] and time.monotonic() < grace_end:
            await asyncio.sleep(0.01)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        pipe.send({"sent": sent, "acked": len(stats["ack"]), "ack": stats["ack"],
                   "deliver": stats["deliver"], "errors": stats["errors"],
                   "unanswered": len(stats["pending"]), "cpu_s": cpu,
                   "disconnects": stats["disconnects"]})


def worker(base, my_users, all_ids, text_chars, pipe, seed):
    uvloop.install()
    asyncio.run(worker_main(base, my_users, all_ids, text_chars, pipe, seed))


def node_cpu(pids):
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--rates", default="2000,4000,6000,8000,12000,16000,24000")
    ap.add_argument("--step-secs", type=float, default=10)
    ap.add_argument("--text-chars", type=int, default=64)
    ap.add_argument("--p99-limit-ms", type=float, default=50)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--users-file", default="independent-client-users.json")
    ap.add_argument("--node-pid", type=int, action="append", default=[])
    ap.add_argument("--label", default="")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    base = args.url.rstrip("/")
    us = users(base, args.users, args.users_file)
    ids = [u["user_id"] for u in us]
    pipes, procs = [], []
    for p in range(args.procs):
        parent, child = mp.Pipe()
        proc = mp.Process(target=worker, args=(base, us[p::args.procs], ids, args.text_chars, child, p))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for parent in pipes:
        assert parent.recv() == "connected"
    print(f"{len(us)} users online over {args.procs} processes", file=sys.stderr)
    best = None
    for rate in [int(r) for r in args.rates.split(",")]:
        load0 = os.getloadavg()[0]
        cpu0 = node_cpu(args.node_pid)
        for parent in pipes:
            parent.send(("step", rate / args.procs, args.step_secs))
        parts = [parent.recv() for parent in pipes]
        node_s = node_cpu(args.node_pid) - cpu0
        ack = sorted(x for p in parts for x in p["ack"])
        deliver = sorted(x for p in parts for x in p["deliver"])
        sent = sum(p["sent"] for p in parts)
        acked = sum(p["acked"] for p in parts)
        tool_s = sum(p["cpu_s"] for p in parts)
        row = {
            "client": "independent-asyncio-picows", "label": args.label, "offered_per_s": rate,
            "sent": sent, "acked": acked, "delivered": len(deliver),
            "acked_per_s": acked / args.step_secs, "delivered_per_s": len(deliver) / args.step_secs,
            "errors": sum(p["errors"] for p in parts),
            "unanswered": sum(p["unanswered"] for p in parts),
            "disconnects": sum(p["disconnects"] for p in parts),
            "ack_ms": {q: percentile(ack, q) for q in (50, 90, 99, 99.9)},
            "deliver_ms": {q: percentile(deliver, q) for q in (50, 90, 99, 99.9)},
            "tool_cpu_us_per_msg": 1e6 * tool_s / max(1, acked),
            "node_cpu_us_per_msg": (1e6 * node_s / max(1, acked)) if args.node_pid else None,
            "loadavg_1m": load0,
        }
        p99s = [row["ack_ms"][99], row["deliver_ms"][99]]
        row["held"] = (acked >= 0.95 * sent and len(deliver) >= 0.95 * sent
                       and all(p is not None and p <= args.p99_limit_ms for p in p99s))
        line = json.dumps(row)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(line + "\n")
        print(f"{rate:>7}/s offered: acked {row['acked_per_s']:.0f}/s, delivered "
              f"{row['delivered_per_s']:.0f}/s, ack p50/p99 {row['ack_ms'][50]}/{row['ack_ms'][99]} ms, "
              f"deliver p99 {row['deliver_ms'][99]} ms, tool {row['tool_cpu_us_per_msg']:.0f} us/msg"
              f"{'' if row['node_cpu_us_per_msg'] is None else ', node %.0f us/msg' % row['node_cpu_us_per_msg']}"
              f" -> {'held' if row['held'] else 'NOT held'}", file=sys.stderr)
        if row["held"]:
            best = rate
        else:
            break
    for parent in pipes:
        parent.send(("stop",))
    for proc in procs:
        proc.join(timeout=10)
    print(f"highest rate held: {best}", file=sys.stderr)


if __name__ == "__main__":
    main()
