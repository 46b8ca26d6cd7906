"""In-cluster client of the Kubernetes e2e test (runs in a pod next to the ChatCluster).

Signs up users, keeps each one's WebSocket open on the node `/v1/assign` names, and sends
one-on-one messages between users living on different pods, until /tmp/stop appears. A
`reconnect` frame or a dropped socket makes the client ask /v1/assign again and resend what
was not acked (same client_msg_id: idempotent). At the end it checks, for every user, that
every acked message is in both inboxes exactly once and that inbox ids are gapless.

Prints `E2E OK ...` and exits 0, or `E2E FAIL ...` and exits 1.
"""

import asyncio
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

import websockets

BASE = os.environ["PARLEY_URL"].rstrip("/")  # http://<name>.<ns>.svc:80
USERS = int(os.environ.get("E2E_USERS", "8"))
MAX_SECONDS = int(os.environ.get("E2E_MAX_SECONDS", "1200"))
RUN = f"{int(time.time())}{random.randint(100, 999)}"


def http(method, path, body=None, token=None):
    req = urllib.request.Request(BASE + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for attempt in range(60):
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if e.code < 500:
                raise
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{method} {path} kept failing for 60 s")


class User:
    def __init__(self, i):
        self.name = f"e2e{RUN}u{i}"
        http("POST", "/v1/users", {"username": self.name, "password": "password-" + self.name})
        s = http("POST", "/v1/sessions", {"username": self.name, "password": "password-" + self.name, "device_id": "d1"})
        self.token, self.id = s["token"], s["user_id"]
        self.node = http("GET", "/v1/assign", token=self.token)["node_id"]
        self.acked = {}  # client_msg_id -> ack
        self.pending = {}  # client_msg_id -> frame
        self.reconnects = 0


async def session(user, peer, stop):
    n = 0
    while not stop.is_set():
        assign = await asyncio.to_thread(http, "GET", "/v1/assign", None, user.token)
        try:
            async with websockets.connect(f"{assign['ws_url']}?token={user.token}", open_timeout=10) as ws:
                for frame in list(user.pending.values()):  # resend what was not acked
                    await ws.send(json.dumps(frame))
                while not stop.is_set():
                    n += 1
                    cid = f"{user.name}-{n}"
                    frame = {"type": "send", "client_msg_id": cid, "to": peer.id, "text": f"hello {n} from {user.name}"}
                    user.pending[cid] = frame
                    await ws.send(json.dumps(frame))
                    deadline = time.monotonic() + 0.5
                    while time.monotonic() < deadline:
                        try:
                            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=deadline - time.monotonic()))
                        except asyncio.TimeoutError:
                            break
                        if msg.get("type") == "ack":
                            user.acked[msg["client_msg_id"]] = msg
                            user.pending.pop(msg["client_msg_id"], None)
                        elif msg.get("type") == "reconnect":
                            raise websockets.ConnectionClosed(None, None)
        except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
            user.reconnects += 1
            await asyncio.sleep(0.5)
    # Final pass over HTTP for anything never acked (idempotent by client_msg_id).
    for cid, frame in list(user.pending.items()):
        body = {k: v for k, v in frame.items() if k != "type"}
        ack = await asyncio.to_thread(http, "POST", "/v1/messages", body, user.token)
        user.acked[cid] = ack
        user.pending.pop(cid)


def inbox(user):
    items, after = [], 0
    while True:
        page = http("GET", f"/v1/sync?after={after}&limit=1000", token=user.token)
        items += page["items"]
        if not page["more"]:
            return items
        after = page["items"][-1]["inbox_id"]


async def main():
    users = [User(i) for i in range(USERS)]
    nodes = {u.node for u in users}
    print(f"{len(users)} users on nodes {sorted(nodes)}", flush=True)
    if len(nodes) < 2:
        print("E2E FAIL: all users were assigned to one node; cannot test across pods", flush=True)
        sys.exit(1)
    # Pair users on different nodes first (the messages must cross pods).
    users.sort(key=lambda u: u.node)
    half = len(users) // 2
    pairs = [(users[i], users[i + half]) for i in range(half)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(session(a, b, stop)) for a, b in pairs] + [asyncio.create_task(session(b, a, stop)) for a, b in pairs]
    started = time.monotonic()
    while not os.path.exists("/tmp/stop") and time.monotonic() - started < MAX_SECONDS:
        await asyncio.sleep(1)
        sent = sum(len(u.acked) for u in users)
        if int(time.monotonic() - started) % 15 == 0:
            print(f"acked so far: {sent}, reconnects: {sum(u.reconnects for u in users)}", flush=True)
    stop.set()
    await asyncio.gather(*tasks)

    failures = []
    for u in users:
        items = inbox(u)
        ids = [m["inbox_id"] for m in items]
        if ids != list(range(1, len(ids) + 1)):
            failures.append(f"{u.name}: inbox ids not gapless")
        seen = [m["client_msg_id"] for m in items if m["from"] == u.id]
        if sorted(seen) != sorted(u.acked):
            failures.append(f"{u.name}: {len(u.acked)} acked, {len(seen)} in own inbox (dupes or losses)")
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            got = {m["client_msg_id"] for m in inbox(y) if m["from"] == x.id}
            missing = set(x.acked) - got
            if missing:
                failures.append(f"{y.name} is missing {len(missing)} acked messages from {x.name}")
    total = sum(len(u.acked) for u in users)
    if failures or total == 0:
        print("E2E FAIL: " + ("; ".join(failures) or "no message was acked"), flush=True)
        sys.exit(1)
    print(f"E2E OK: {total} messages acked across {len(nodes)} nodes, none lost or duplicated; "
          f"{sum(u.reconnects for u in users)} reconnects", flush=True)


asyncio.run(main())
