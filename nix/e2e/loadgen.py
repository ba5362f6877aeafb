#!/usr/bin/env python3
"""Open-loop HTTP load generator for the devops-api platform tests (stdlib only).

Sends requests at a fixed rate whatever the server does (open loop: a slow or hung server makes requests
queue, and their latency counts from the time they were due), mixing writes (POST /v1/tasks) and reads
(GET /v1/tasks/{id} of an acknowledged write). Every acknowledged write is read back at the end. Runs
until --duration elapses or --stop-file appears, then prints one summary line and writes JSON to --out.

A request fails on a connection error, a timeout, a 5xx, or any status other than the expected one
(201/200 for writes, 200 for reads). A 503 counts as "clear" when it carries Retry-After and an
application/problem+json body (the API's own answer, not a proxy's). Traffic goes only where --url points.
"""

import argparse
import http.client
import json
import os
import queue
import random
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter


class Conn(http.client.HTTPSConnection):
    """HTTPS connection that sends SNI for the virtual host while connecting to another address."""

    def __init__(self, host, port, sni, context, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._sni = sni
        self._ctx = context

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self._sni)


class Client:
    def __init__(self, args, token):
        u = urllib.parse.urlsplit(args.url)
        self.scheme, self.addr, self.port = u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.vhost = args.host or u.hostname
        self.timeout = args.timeout
        self.headers = {"Host": self.vhost, "Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.ctx = None
        if self.scheme == "https":
            self.ctx = ssl.create_default_context()
            if args.insecure:
                self.ctx.check_hostname = False
                self.ctx.verify_mode = ssl.CERT_NONE
        self.conn = None
        self.clear_503 = False  # the last response was a 503 with Retry-After and a problem document

    def request(self, method, path, body=None):
        """Return (status, body bytes); raises on network errors (the connection is then dropped)."""
        if self.conn is None:
            if self.ctx is not None:
                self.conn = Conn(self.addr, self.port, self.vhost, self.ctx, self.timeout)
            else:
                self.conn = http.client.HTTPConnection(self.addr, self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=self.headers)
            resp = self.conn.getresponse()
            data = resp.read()
            self.clear_503 = (resp.status == 503 and resp.getheader("retry-after") is not None
                              and resp.getheader("content-type", "").startswith("application/problem+json"))
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return resp.status, data
        except Exception:
            self.close()
            raise

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []
        self.failures = Counter()
        self.fail_times = []  # when the failed requests were due, seconds from the start
        # When they were actually sent: later than due when the machine cannot keep up (open loop, queued).
        self.fail_sent_times = []
        self.fail_done_times = []  # when they failed (answer or error), seconds from the start
        self.max_lag = 0.0  # longest wait of a request in the queue (sent - due), seconds
        self.acked = []
        self.requests = 0
        self.clear_503 = 0  # failed requests answered 503 with Retry-After and a problem document

    def ok(self, latency, lag=0.0):
        with self.lock:
            self.requests += 1
            self.latencies.append(latency)
            self.max_lag = max(self.max_lag, lag)

    def fail(self, kind, latency, t, clear_503=False, sent=None, lag=0.0):
        with self.lock:
            self.requests += 1
            self.clear_503 += clear_503
            self.latencies.append(latency)
            self.failures[kind] += 1
            self.fail_times.append(t)
            self.fail_sent_times.append(t if sent is None else sent)
            self.fail_done_times.append(t + latency)  # due + (done - due)
            self.max_lag = max(self.max_lag, lag)


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def worker(args, token, jobs, stats, start, warm):
    client = Client(args, token)
    rnd = random.Random()
    try:  # open the connection (TLS handshake) before the clock starts
        client.request("GET", "/health")
    except Exception:
        client.close()
    warm.release()
    while True:
        job = jobs.get()
        if job is None:
            client.close()
            return
        seq, due = job
        sent = time.monotonic()
        lag = sent - due
        when = {"sent": sent - start["t0"], "lag": lag}
        with stats.lock:
            ids = stats.acked
            target = ids[rnd.randrange(len(ids))] if ids else None
        write = target is None or rnd.random() < args.write_ratio
        try:
            if write:
                body = json.dumps({"title": f"load {seq}", "tags": ["load"]}).encode()
                status, data = client.request("POST", "/v1/tasks", body)
                if status in (200, 201):
                    task_id = json.loads(data)["id"]
                    with stats.lock:
                        stats.acked.append(str(task_id))
                    stats.ok(time.monotonic() - due, lag)
                else:
                    stats.fail(f"POST {status}", time.monotonic() - due, due - start["t0"], client.clear_503, **when)
            else:
                status, _ = client.request("GET", f"/v1/tasks/{target}")
                if status == 200:
                    stats.ok(time.monotonic() - due, lag)
                else:
                    stats.fail(f"GET {status}", time.monotonic() - due, due - start["t0"], client.clear_503, **when)
        except Exception as exc:  # connection refused/reset, timeout, bad JSON
            stats.fail(type(exc).__name__, time.monotonic() - due, due - start["t0"], **when)


def readback(args, token, ids):
    """Read every acknowledged write; return (missing, errors) counts."""
    todo = queue.Queue()
    for i in ids:
        todo.put(i)
    lock = threading.Lock()
    result = {"missing": 0, "errors": 0, "examples": []}

    def run():
        client = Client(args, token)
        while True:
            try:
                task_id = todo.get_nowait()
            except queue.Empty:
                client.close()
                return
            for attempt in range(3):
                try:
                    status, _ = client.request("GET", f"/v1/tasks/{task_id}")
                except Exception:
                    if attempt == 2:
                        with lock:
                            result["errors"] += 1
                    time.sleep(0.2)
                    continue
                if status != 200:
                    with lock:
                        result["missing"] += 1
                        if len(result["examples"]) < 5:
                            result["examples"].append(f"{task_id}:{status}")
                break

    threads = [threading.Thread(target=run, daemon=True) for _ in range(args.readback_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="base URL to connect to, e.g. https://127.0.0.1:443")
    p.add_argument("--host", help="virtual host for the Host header and SNI (default: the URL's host)")
    p.add_argument("--token-file", required=True, help="file whose first line is the Bearer token")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    p.add_argument("--duration", type=float, default=300.0, help="maximum seconds of load (default 300)")
    p.add_argument("--stop-file", help="stop the load as soon as this file exists")
    p.add_argument("--ready-file", help="created once every connection is open and the load starts")
    p.add_argument("--write-ratio", type=float, default=0.5, help="share of writes (default 0.5)")
    p.add_argument("--workers", type=int, default=256, help="concurrent connections (default 256)")
    p.add_argument("--readback-workers", type=int, default=16)
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    p.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    p.add_argument("--name", default="load", help="label for the summary line")
    p.add_argument("--out", help="write the JSON result here")
    args = p.parse_args()

    with open(args.token_file, encoding="utf-8") as f:
        token = f.readline().strip()
        if ":" in token:  # a TOKENS_FILE line NAME:TOKEN
            token = token.split(":", 1)[1]

    stats = Stats()
    jobs = queue.Queue()
    warm = threading.Semaphore(0)
    start = {"t0": time.monotonic()}  # set again once every worker is connected
    threads = [threading.Thread(target=worker, args=(args, token, jobs, stats, start, warm), daemon=True)
               for _ in range(args.workers)]
    for t in threads:
        t.start()
    for _ in threads:
        warm.acquire()
    t0 = time.monotonic()
    start["t0"] = t0
    start_epoch = time.time()  # the same instant on the wall clock: lets callers place their events on t0's scale
    # Opening the connections (TLS handshakes) can take many seconds on a busy machine: the caller waits
    # for this file before it starts what the load is meant to observe.
    if args.ready_file:
        open(args.ready_file, "w").close()

    seq = 0
    interval = 1.0 / args.rate
    while True:
        due = t0 + seq * interval
        now = time.monotonic()
        if due - t0 >= args.duration:
            break
        if seq % 20 == 0 and args.stop_file and os.path.exists(args.stop_file):
            break
        if due > now:
            time.sleep(due - now)
        jobs.put((seq, due))
        seq += 1
    load_seconds = time.monotonic() - t0
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()

    with stats.lock:
        acked = list(stats.acked)
    rb = readback(args, token, acked)
    lat = sorted(stats.latencies)
    fails = sum(stats.failures.values())
    ft = sorted(stats.fail_times)
    fst = sorted(stats.fail_sent_times)
    fdt = sorted(stats.fail_done_times)
    result = {
        "name": args.name,
        "requests": stats.requests,
        "failures": fails,
        "failure_kinds": dict(stats.failures),
        "failures_clear_503": stats.clear_503,
        "p50_ms": round(percentile(lat, 50) * 1000, 1),
        "p99_ms": round(percentile(lat, 99) * 1000, 1),
        "max_ms": round((lat[-1] if lat else 0) * 1000, 1),
        "duration_s": round(load_seconds, 1),
        "rate": round(stats.requests / load_seconds, 1) if load_seconds > 0 else 0,
        "writes_acked": len(acked),
        "readback_missing": rb["missing"],
        "readback_errors": rb["errors"],
        "readback_examples": rb["examples"],
        "first_failure_s": round(ft[0], 2) if ft else None,
        "last_failure_s": round(ft[-1], 2) if ft else None,
        "failure_window_s": round(ft[-1] - ft[0], 2) if ft else 0.0,
        "first_failure_sent_s": round(fst[0], 2) if fst else None,
        "last_failure_sent_s": round(fst[-1], 2) if fst else None,
        "first_failure_done_s": round(fdt[0], 2) if fdt else None,
        "max_lag_s": round(stats.max_lag, 2),
        "start_epoch": round(start_epoch, 3),
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f)
    print(f"{args.name}: requests={result['requests']} failures={fails} {dict(stats.failures) or ''} "
          f"p50={result['p50_ms']}ms p99={result['p99_ms']}ms rate={result['rate']}/s "
          f"acked_writes={len(acked)} readback_missing={rb['missing']} readback_errors={rb['errors']} "
          f"failure_window={result['failure_window_s']}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
