#!/usr/bin/env python3
"""Both ends of a tunnel in the test fabric, run inside a namespace.

  serve PORT_HTTP PORT_ECHO [PORT...]   in a container: an HTTP server on PORT_HTTP
                                        (GET /page: PAGE_SIZE bytes of a fixed
                                        pattern), a TCP echo on PORT_ECHO and on
                                        every further PORT; prints "ready"
  http URL [CAFILE]                     GET: prints {"status", "length", "sha256"}
  echo HOST PORT N SIZE                 N connections at once, each SIZE random
                                        bytes echoed back and compared: {"ok", "bad"}
  connect HOST PORT [SRC_PORT]          one TCP connection attempt (2 s):
                                        "open", "refused" or "timeout"
  hold HOST PORT                        connects, checks one echo, prints "held",
                                        then waits for the connection to end and
                                        prints "ended <seconds held>"
  rtt HOST PORT N                       one connection, N round trips of 32 bytes:
                                        {"p50_us", "p99_us"}
  connrate HOST PORT SECONDS THREADS    connect, one echo, close, in a loop on THREADS
                                        threads for SECONDS: {"per_sec", "failed"}
"""
import hashlib, json, os, socket, socketserver, ssl, sys, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE_SIZE = 100_000
PAGE = (b"i6pn tunnel page " * (PAGE_SIZE // 17 + 1))[:PAGE_SIZE]


# SO_REUSEPORT on the listeners: a client may bind the same port (a tenant
# sending from its tunneled port, test/e2e-tunnel.test.ts).
class Http6(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_port = True


class Page(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/page":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class Echo6(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    allow_reuse_port = True


def serve(http_port, *echo_ports):
    servers = [Http6(("::", int(http_port)), Page)] + [Echo6(("::", int(p)), Echo) for p in echo_ports]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def http(url, cafile=None):
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
        body = r.read()
        print(json.dumps({"status": r.status, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}))


def echo(host, port, n, size):
    n, size = int(n), int(size)
    results = []

    def one():
        payload = os.urandom(size)
        try:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                got = bytearray()
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            results.append(bytes(got) == payload)
        except OSError:
            results.append(False)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"ok": sum(results), "bad": len(results) - sum(results)}))


def connect(host, port, src_port=None):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(2)
    if src_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::", int(src_port)))
    try:
        s.connect((host, int(port)))
        print("open")
    except ConnectionRefusedError:
        print("refused")
    except (socket.timeout, TimeoutError):
        print("timeout")
    except OSError as e:
        print(f"error {e.errno}")
    finally:
        s.close()


def hold(host, port):
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"hello\n")
        if s.recv(16) != b"hello\n":
            print("bad echo", flush=True)
            return
        print("held", flush=True)
        t0 = time.monotonic()
        s.settimeout(60)
        try:
            while s.recv(16):
                pass
        except OSError:
            pass
        print(f"ended {time.monotonic() - t0:.3f}", flush=True)


def rtt(host, port, n):
    n = int(n)
    times = []
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 32
        for i in range(n + 100):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(s.recv(64))
            if i >= 100:  # warm-up
                times.append((time.perf_counter_ns() - t0) / 1000)
    times.sort()
    print(json.dumps({"p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)]}))


def connrate(host, port, seconds, threads):
    end = time.monotonic() + float(seconds)
    counts, failed = [], []

    def loop():
        ok = bad = 0
        while time.monotonic() < end:
            try:
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.sendall(b"x")
                    if s.recv(1) == b"x":
                        ok += 1
                    else:
                        bad += 1
            except OSError:
                bad += 1
        counts.append(ok)
        failed.append(bad)

    ts = [threading.Thread(target=loop) for _ in range(int(threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps({"per_sec": sum(counts) / float(seconds), "failed": sum(failed)}))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"serve": serve, "http": http, "echo": echo, "connect": connect, "hold": hold, "rtt": rtt, "connrate": connrate}[cmd](*args)
