"""i6pn test fabric: steady UDP flows of one container, for the fault suite.

Runs inside a container's network namespace (started with nsenter). Receives
on UDP FLOW_PORT and keeps, per flow id, the sequence numbers that arrived and
the longest silence between two arrivals; sends flows at a fixed rate when
told to, each datagram "<flow> <seq>". A spoofed flow is sent as raw Ethernet
frames (AF_PACKET, hand-made IPv6/UDP with a foreign source) to the gateway's
MAC, so the kernel's socket layer, which would refuse the source, is out of
the way and the dataplane is what must stop it.

  stdin:  {"op": "send", "flow": "f1", "dst": "fdaa:…", "pps": 200}
          {"op": "send", "flow": "f2", "dst": "fdaa:…", "pps": 100, "src": "fdaa:…", "mac": "aa:…"}   (spoofed)
          {"op": "stop", "flow": "f1"}      -> {"flow": "f1", "sent": N, "errors": E}
          {"op": "report", "id": 3}         -> {"id": 3, "flows": {"f1": {"received": N, "distinct": D,
                                                  "maxSeq": S, "longestGapMs": G, "firstMs": T0, "lastMs": T1}}}
  stdout: {"ready": true, "port": 7101}
Times are CLOCK_REALTIME milliseconds, comparable with the test's Date.now().
"""
import socket
import struct
import sys
import threading
import time

from probe import commands, emit

FLOW_PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 7101
recv_lock = threading.Lock()
flows_in = {}
senders = {}


def now_ms():
    return time.time() * 1000.0


def receive(sock):
    while True:
        data, _peer = sock.recvfrom(256)
        t = now_ms()
        try:
            flow, seq = data.decode().split()
            seq = int(seq)
        except ValueError:
            continue
        with recv_lock:
            f = flows_in.get(flow)
            if f is None:
                f = flows_in[flow] = {"seqs": set(), "received": 0, "gap": 0.0, "first": t, "last": t}
            f["received"] += 1
            f["seqs"].add(seq)
            f["gap"] = max(f["gap"], t - f["last"])
            f["last"] = t


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def spoofed_frame(mac, src, dst, payload):
    s = socket.inet_pton(socket.AF_INET6, src)
    d = socket.inet_pton(socket.AF_INET6, dst)
    length = 8 + len(payload)
    pseudo = s + d + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", 40003, FLOW_PORT, length, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip6 = struct.pack("!IHBB", 0x60000000, length, 17, 64) + s + d
    eth = bytes.fromhex(mac.replace(":", "")) + b"\x02\x00\x00\x00\x00\x01" + b"\x86\xdd"
    return eth + ip6 + udp


class Sender(threading.Thread):
    def __init__(self, cmd):
        super().__init__(daemon=True)
        self.cmd = cmd
        self.stop_ev = threading.Event()
        self.sent = 0
        self.errors = 0

    def run(self):
        c = self.cmd
        flow, dst, period = c["flow"], c["dst"], 1.0 / float(c["pps"])
        if c.get("src"):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind(("eth0", 0))
            send = lambda payload: sock.send(spoofed_frame(c["mac"], c["src"], dst, payload))
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            send = lambda payload: sock.sendto(payload, (dst, FLOW_PORT))
        start = time.monotonic()
        seq = 0
        while not self.stop_ev.is_set():
            try:
                send(("%s %d" % (flow, seq)).encode())
                self.sent += 1
            except OSError:
                self.errors += 1
            seq += 1
            delay = start + seq * period - time.monotonic()
            if delay > 0:
                self.stop_ev.wait(delay)
        sock.close()


def main():
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("::", FLOW_PORT))
    threading.Thread(target=receive, args=(sock,), daemon=True).start()
    emit({"ready": True, "port": FLOW_PORT})
    for cmd in commands():
        op = cmd.get("op")
        if op == "send":
            s = Sender(cmd)
            senders[cmd["flow"]] = s
            s.start()
        elif op == "stop":
            s = senders.pop(cmd["flow"], None)
            if s is None:
                emit({"flow": cmd["flow"], "error": "no such flow"})
                continue
            s.stop_ev.set()
            s.join()
            emit({"flow": cmd["flow"], "sent": s.sent, "errors": s.errors})
        elif op == "report":
            with recv_lock:
                flows = {
                    k: {"received": f["received"], "distinct": len(f["seqs"]), "maxSeq": max(f["seqs"]) if f["seqs"] else -1,
                        "longestGapMs": round(f["gap"], 1), "firstMs": f["first"], "lastMs": f["last"]}
                    for k, f in flows_in.items()
                }
            emit({"id": cmd.get("id"), "flows": flows})
        else:
            emit({"error": "unknown op", "cmd": cmd})


if __name__ == "__main__":
    main()
