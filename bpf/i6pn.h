/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * i6pn ABI: the one definition of every type shared by the BPF programs and
 * the agent. The agent never hand-codes these layouts: `make build` reads the
 * compiled object's BTF and generates agent/bpf/abi.generated.ts, and the
 * agent checks the map key and value sizes against it at load time.
 *
 * Address plan (fdaa::/16 is private, everything else is not ours):
 *
 *   0        16                 48        64                      128
 *   | fdaa   | workspace id (32) | region  | endpoint id (64)        |
 */
#ifndef I6PN_H
#define I6PN_H

#include <linux/types.h>
#include <linux/in6.h>

#define I6PN_PREFIX_HI 0xfd
#define I6PN_PREFIX_LO 0xaa

/*
 * The node resolver's address, fdaa::53: in workspace 0, which is never
 * assigned, so no endpoint has it. Every node holds it on a local interface
 * and answers DNS on UDP and TCP port 53 there (agent/dns-server.ts); the
 * agent's copy is RESOLVER_ADDRESS in lib/address.ts, and the golden table
 * sends packets to that copy, so the two cannot differ unnoticed.
 */
#define I6PN_RESOLVER_LAST_GROUP 0x0053
#define I6PN_DNS_PORT 53

/* The four enforcement points. */
enum i6pn_hook {
	I6PN_HOOK_FROM_FABRIC = 0,   /* XDP (or TC ingress) on the node's uplink */
	I6PN_HOOK_FROM_ENDPOINT = 1, /* TC ingress on an endpoint's host-side veth */
	I6PN_HOOK_TO_ENDPOINT = 2,   /* TC egress on the same veth */
	I6PN_HOOK_TO_FABRIC = 3,     /* TC egress on the node's uplink */
	I6PN_HOOK_MAX,
};

/* What happened to the packet. WOULD_DROP is a drop that monitor mode let through. */
enum i6pn_verdict {
	I6PN_VERDICT_PASS = 0,
	I6PN_VERDICT_DROP = 1,
	I6PN_VERDICT_WOULD_DROP = 2,
	I6PN_VERDICT_MAX,
};

/*
 * Why. Values are stable: the agent exports them as metric labels. Checks run
 * in the order listed under each hook in bpf/policy.h (cheapest first), and a
 * packet reports the first check it fails.
 */
enum i6pn_reason {
	I6PN_PASS_PRIVATE = 0,          /* same workspace, same region, live members */
	I6PN_PASS_NOT_PRIVATE = 1,      /* no fdaa::/16 address: not ours */
	I6PN_DROP_TRUNCATED = 2,        /* a header ends past the packet */
	I6PN_DROP_MALFORMED = 3,        /* IPv6 ethertype but not an IPv6 header */
	I6PN_DROP_VLAN_DEPTH = 4,       /* more VLAN tags than the parser walks */
	I6PN_DROP_EXT_HDR_LIMIT = 5,    /* longer extension header chain than the bound */
	I6PN_DROP_EXT_HDR_DENIED = 6,   /* extension header not on the allow-list */
	I6PN_DROP_ROUTING_HEADER = 7,   /* routing header in private traffic */
	I6PN_DROP_OUTSIDE = 8,          /* private address paired with a non-private one */
	I6PN_DROP_CROSS_WORKSPACE = 9,  /* source and destination in different workspaces */
	I6PN_DROP_CROSS_REGION = 10,    /* same workspace, different regions */
	I6PN_DROP_NOT_LOCAL = 11,       /* destination is not served by this node / veth */
	I6PN_DROP_UNKNOWN_IFACE = 12,   /* TC hook on an interface the agent did not register */
	I6PN_DROP_SPOOFED_SOURCE = 13,  /* source is not the sender's own address */
	I6PN_DROP_NO_I6PN = 14,         /* endpoint without private networking */
	I6PN_DROP_UNKNOWN_SOURCE = 15,  /* source is not a live member */
	I6PN_DROP_UNKNOWN_DEST = 16,    /* destination is not a live member */
	I6PN_DROP_SEALED = 17,          /* the veth's endpoint was revoked: nothing in or out */
	I6PN_DROP_UNBOUND_SOURCE = 18,  /* private packet that did not enter where its source is bound */
	I6PN_DROP_NON_PRIVATE = 19,     /* traffic on an i6pn veth that is not i6pn's (forwarding off) */
	I6PN_DROP_TO_NODE = 20,         /* a container reaching the node's own addresses */
	I6PN_PASS_LINK_SCOPE = 21,      /* NDP/MLD between an endpoint and its node, own addresses */
	I6PN_PASS_ICMP_ERROR = 22,      /* ICMPv6 error about a packet the endpoint sent */
	I6PN_PASS_FORWARD = 23,         /* a container's own non-private traffic (--forward-non-private) */
	I6PN_PASS_RESOLVER = 24,        /* DNS (UDP/TCP 53) between an endpoint and its node's resolver */
	I6PN_DROP_RESOLVER_NOT_DNS = 25, /* to or from the resolver's address, but not DNS */
	/* Tunnels (bpf/policy.h, i6pn_tunnel_rule): the one way between a gateway and a tenant. */
	I6PN_PASS_TUNNEL = 26,          /* a gateway to a tunneled (endpoint address, protocol, port) */
	I6PN_PASS_TUNNEL_REPLY = 27,    /* a tunneled (address, protocol, port) answering a gateway */
	I6PN_DROP_NOT_TUNNELED = 28,    /* a gateway to anything no tunnel exposes */
	I6PN_DROP_TO_GATEWAY = 29,      /* a tenant to a gateway, other than a tunneled port's reply */
	I6PN_REASON_MAX,
};

enum i6pn_mode {
	I6PN_MODE_ENFORCE = 0,
	I6PN_MODE_MONITOR = 1, /* every drop passes and is counted as WOULD_DROP */
};

/* Bits of i6pn_endpoint.flags and i6pn_local_iface.flags. */
enum i6pn_endpoint_flag {
	I6PN_EP_I6PN = 1 << 0,   /* private networking enabled */
	I6PN_EP_LOCAL = 1 << 1,  /* served by this node (set by the agent) */
	I6PN_EP_SEALED = 1 << 2, /* local_ifaces only: the veth's endpoint was revoked; drop all */
};

/* Bits of i6pn_config.flags. */
enum i6pn_config_flag {
	/* Pass a container's own non-private IPv6 traffic (internet egress via the node). */
	I6PN_CFG_FORWARD_NON_PRIVATE = 1 << 0,
	/*
	 * Local delivery past the node's stack: a private packet the TC
	 * from-endpoint or from-fabric hook passed, for an endpoint bound on this
	 * node, goes straight out of that endpoint's veth (bpf_redirect_neigh),
	 * through its to-endpoint hook like any other.
	 */
	I6PN_CFG_LOCAL_FAST_PATH = 1 << 1,
};

/*
 * Workspace 0 of fdaa::/16 is infrastructure, never a tenant's. Its members
 * in the endpoints map are the region's tunnel gateways (the store writes a
 * workspace-0 entry only for a gateway: lib/schema.ts), at
 * fdaa:0:0:<region>:6a7e:<48 random bits> (lib/address.ts).
 */
#define I6PN_INFRA_WORKSPACE 0

/*
 * tunnels map: what the region's gateways may reach, filled by the agent
 * from the region's tunnels bucket. A gateway's packet passes only to a
 * (tenant endpoint address, protocol, destination port) in it, and a
 * tenant's packet reaches a gateway only from one (source port).
 */
struct i6pn_tunnel_key {
	struct in6_addr addr; /* the tenant endpoint */
	__u8 proto;           /* IPPROTO_TCP */
	__u8 pad;
	__u16 port;           /* the endpoint's port, host byte order */
};

struct i6pn_tunnel {
	__u64 id; /* the tunnel's 48-bit id (lib/schema.ts), for whoever dumps the map */
};

/* Parser bounds. A private packet that needs more than this is dropped. */
#define I6PN_MAX_VLAN_TAGS 2
#define I6PN_MAX_EXT_HDRS 6

/* endpoints map: struct in6_addr -> struct i6pn_endpoint */
struct i6pn_endpoint {
	__u32 workspace; /* bits 16..47 of the address */
	__u16 region;    /* bits 48..63 of the address */
	__u16 flags;     /* enum i6pn_endpoint_flag */
	__u32 node;      /* node id (agent's hash of the node name), for reporting */
	__u32 ifindex;   /* the host-side veth bound to it (LOCAL, hooked, not sealed), else 0:
			  * to-endpoint and to-fabric accept a local source only from there */
};

/*
 * local_ifaces map: host-side veth ifindex -> the endpoint it is bound to.
 * The binding is for the veth's life: a revoked endpoint's entry stays, with
 * I6PN_EP_SEALED, until the veth is gone (its ifindex is never re-bound).
 */
struct i6pn_local_iface {
	struct in6_addr addr;
	__u32 flags; /* enum i6pn_endpoint_flag */
};

/*
 * sync_state map, one entry at index 0: the membership the endpoints map
 * reflects, written by the agent after each batch it applies and read by none
 * of the programs. A restarted agent resumes from `revision` when `stream`
 * still names the same endpoints stream of the same region, instead of
 * reading the region again.
 */
struct i6pn_sync_state {
	__u64 revision; /* last store revision (stream sequence) applied; 0: none, read the region whole */
	__u64 stream;   /* 64-bit hash of the endpoints stream's name and creation time */
	__u32 region;   /* region id the entries belong to */
	__u32 pad;
};

/* config map, one entry at index 0 */
struct i6pn_config {
	__u32 node;            /* this node's id */
	__u16 region;          /* this node's region id */
	__u16 pad;
	enum i6pn_mode mode;
	__u32 events_per_sec;  /* drop-event budget per CPU; 0 disables events */
	__u32 uplink_ifindex;  /* the node's uplink: the one way in for non-local sources */
	__u32 flags;           /* enum i6pn_config_flag */
};

/* counters map (per-CPU array), index i6pn_counter_index(hook, verdict, reason) */
struct i6pn_counter {
	__u64 packets;
	__u64 bytes;
};

#define I6PN_COUNTERS_MAX (I6PN_HOOK_MAX * I6PN_VERDICT_MAX * I6PN_REASON_MAX)

static inline __u32 i6pn_counter_index(__u32 hook, __u32 verdict, __u32 reason)
{
	return (hook * I6PN_VERDICT_MAX + verdict) * I6PN_REASON_MAX + reason;
}

/* Bits of i6pn_drop_event.flags: which of its fields the packet filled. */
enum i6pn_event_flag {
	I6PN_EVENT_IPV6 = 1 << 0,  /* an IPv6 packet: src, dst and proto are its own (else all zero) */
	I6PN_EVENT_PORTS = 1 << 1, /* TCP or UDP: sport and dport */
	I6PN_EVENT_ICMP = 1 << 2,  /* ICMPv6: icmp_type and icmp_code */
};

/*
 * Ring buffer record of a sampled drop (or would-drop). A record of another
 * size (from programs of an older agent, still in the pinned ring buffer after
 * an upgrade) is refused by the reader, not misread.
 */
struct i6pn_drop_event {
	__u64 ts_ns;           /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	struct in6_addr src;   /* the fixed IPv6 header's addresses */
	struct in6_addr dst;
	__u32 ifindex;         /* the interface the hook runs on */
	__u32 len;             /* the frame's length */
	enum i6pn_hook hook;
	enum i6pn_verdict verdict;
	enum i6pn_reason reason;
	__u8 proto;            /* upper-layer protocol after the extension headers; the fixed
				* header's next header when the chain cannot be walked */
	__u8 flags;            /* enum i6pn_event_flag */
	__u8 icmp_type;
	__u8 icmp_code;
	__u16 sport;           /* host byte order */
	__u16 dport;
	__u32 pad;
};

/*
 * Per-CPU token bucket behind the drop-event rate limit. `used` counts every
 * drop of the window, sampled or not: past the budget it is how many were
 * not sampled (folded into i6pn_event_stats when the window closes).
 */
struct i6pn_event_budget {
	__u64 window_start_ns;
	__u32 used;
	__u32 pad;
};

/*
 * event_stats map, one per-CPU entry: drop events never written, so that
 * every drop is either an event or counted here (the agent adds the open
 * window's `used` past the budget). Written only when a budget window closes
 * and when the ring buffer is full, never per dropped packet.
 */
struct i6pn_event_stats {
	__u64 over_budget; /* drops past the budget, in windows already closed */
	__u64 ring_full;   /* events the ring buffer had no room for (the agent is not reading) */
};

/*
 * Carries every enum and the event layout into BTF (the ring buffer and enum
 * constants are otherwise invisible to it), so the agent's generated ABI module
 * cannot drift from this header. The map is never read or written, nor
 * created in the kernel (see maps.h).
 */
struct i6pn_abi {
	enum i6pn_hook hook;
	enum i6pn_verdict verdict;
	enum i6pn_reason reason;
	enum i6pn_mode mode;
	enum i6pn_endpoint_flag flag;
	enum i6pn_config_flag config_flag;
	enum i6pn_event_flag event_flag;
	struct i6pn_drop_event event;
	struct i6pn_event_budget budget;
	struct i6pn_event_stats event_stats;
};

#endif /* I6PN_H */
