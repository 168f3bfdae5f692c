"""i6pn test fabric: the probe daemon of one container.

Runs inside a container's network namespace (started with nsenter). It listens
on TCP and UDP ports on every address and reports what arrives; it sends TCP
connections and UDP datagrams when told to on stdin. One JSON object per line
both ways, so one process per container serves the whole matrix.

  stdin:  {"id": 6, "op": "ping", "dst": "fdaa:…", "timeout": 1}
          {"id": 7, "op": "tcp", "dst": "fdaa:…", "port": 7000, "token": "t7", "timeout": 1.0}
          {"id": 8, "op": "udp", "dst": "fdaa:…", "port": 7001, "token": "t8"}
          {"id": 9, "op": "sync"}
  stdout: {"ready": true, "tcp": 7000, "udp": 7001}
          {"id": 7, "ok": true} | {"id": 7, "ok": false, "err": "timeout"}
          {"ev": "tcp"|"udp", "src": "fdaa:…", "token": "t8"}   (something arrived here)
"""
import json
import socket
import subprocess
import sys
import threading

TCP_PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 7000
UDP_PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 7001
out_lock = threading.Lock()


def emit(obj):
    line = json.dumps(obj)
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def serve_tcp(srv):
    while True:
        conn, peer = srv.accept()
        threading.Thread(target=handle_tcp, args=(conn, peer), daemon=True).start()


def handle_tcp(conn, peer):
    try:
        conn.settimeout(2.0)
        data = b""
        while not data.endswith(b"\n") and len(data) < 256:
            chunk = conn.recv(256)
            if not chunk:
                break
            data += chunk
        token = data.decode(errors="replace").strip()
        conn.sendall(("ok " + token + "\n").encode())
        emit({"ev": "tcp", "src": peer[0], "token": token})
    except OSError:
        pass
    finally:
        conn.close()


def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(2048)
        emit({"ev": "udp", "src": peer[0], "token": data.decode(errors="replace").strip()})


def do_tcp(cmd):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(float(cmd.get("timeout", 1.0)))
    try:
        s.connect((cmd["dst"], int(cmd.get("port", TCP_PORT))))
        s.sendall((cmd["token"] + "\n").encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
        ok = reply.decode(errors="replace").strip() == "ok " + cmd["token"]
        emit({"id": cmd["id"], "ok": ok} if ok else {"id": cmd["id"], "ok": False, "err": "bad-reply"})
    except socket.timeout:
        emit({"id": cmd["id"], "ok": False, "err": "timeout"})
    except ConnectionRefusedError:
        emit({"id": cmd["id"], "ok": False, "err": "refused"})
    except OSError as e:
        emit({"id": cmd["id"], "ok": False, "err": "oserror:" + (e.strerror or str(e)).replace(" ", "-").lower()})
    finally:
        s.close()


def do_udp(cmd):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.sendto(cmd["token"].encode(), (cmd["dst"], int(cmd.get("port", UDP_PORT))))
        emit({"id": cmd["id"], "ok": True})
    except OSError as e:
        emit({"id": cmd["id"], "ok": False, "err": "oserror:" + (e.strerror or str(e)).replace(" ", "-").lower()})
    finally:
        s.close()


def do_ping(cmd):
    """ICMPv6 echo with iputils ping, from this container (a child of this process, so cheap to start)."""
    try:
        r = subprocess.run(
            ["ping", "-6", "-n", "-q", "-c", "1", "-W", str(int(cmd.get("timeout", 1))), cmd["dst"]],
            capture_output=True, text=True, timeout=float(cmd.get("timeout", 1)) + 5,
        )
    except subprocess.TimeoutExpired:
        emit({"id": cmd["id"], "ok": False, "err": "timeout"})
        return
    if r.returncode == 0:
        emit({"id": cmd["id"], "ok": True})
        return
    text = (r.stdout + r.stderr).lower()
    err = "unreachable" if "unreachable" in text else "timeout" if "0 received" in text else "exit-%d" % r.returncode
    emit({"id": cmd["id"], "ok": False, "err": err})


def do_sync(cmd):
    """Answered after every event emitted before it: the caller has seen all arrivals so far."""
    emit({"id": cmd["id"], "ok": True})


def commands():
    """The JSON commands on stdin, one a line (a bad line is answered and skipped). flow.py reads its own with it."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except ValueError:
            emit({"error": "bad command", "line": line})


def main():
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("::", TCP_PORT))
    tcp.listen(128)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::", UDP_PORT))
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    emit({"ready": True, "tcp": TCP_PORT, "udp": UDP_PORT})
    for cmd in commands():
        if cmd.get("op") == "sync":
            do_sync(cmd)
            continue
        op = {"tcp": do_tcp, "udp": do_udp, "ping": do_ping}.get(cmd.get("op"))
        if op is None:
            emit({"id": cmd.get("id"), "ok": False, "err": "unknown-op"})
            continue
        threading.Thread(target=op, args=(cmd,), daemon=True).start()


if __name__ == "__main__":
    main()
