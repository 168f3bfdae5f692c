/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The i6pn policy: which packets pass, and why the others do not.
 *
 * A packet is private when both addresses are in fdaa::/16, mixed when one
 * is, public when neither is. A private packet passes only if both addresses
 * are live members, with private networking, of the same workspace and
 * region, and it entered the node where its source is proven (source
 * binding, below). Checks run cheapest first, and a packet reports the first
 * check it fails:
 *
 *   all hooks     parse (truncated, malformed, VLAN depth)
 *   veth hooks    private: workspace / region bits differ (below), then
 *                 the veth: unknown_iface (not bound), sealed (revoked)
 *   from-fabric,  public, or not IPv6                   -> pass (not ours)
 *   to-fabric     mixed: ICMPv6 error quoting a packet the private
 *                   destination sent -> pass_icmp_error; else outside
 *   veth hooks    DNS with the node's resolver (fdaa::53, its own workspace
 *                   0): see i6pn_resolver_veth -> pass_resolver; anything
 *                   else to or from it -> resolver_not_dns
 *   veth hooks    not IPv6, public or mixed: see i6pn_veth_not_private
 *                   (NDP/MLD with the endpoint's own addresses, ICMPv6
 *                   errors about its own packets, forwarding when enabled;
 *                   everything else: non_private, spoofed_source, outside,
 *                   to_node)
 *   private       workspace bits differ             -> cross_workspace
 *                 region bits differ                -> cross_region
 *   from-fabric   dst region bits != node region    -> not_local
 *   all but       extension header chain            -> routing_header,
 *   to-fabric                                          ext_hdr_denied/limit
 *   from-fabric   dst: unknown_dest, not_local (not on this node), no_i6pn
 *                 src: unknown_source, spoofed_source (a local endpoint's
 *                      address arriving from outside the node), no_i6pn
 *   from-endpoint src must be the veth's endpoint: spoofed_source; that
 *                 endpoint: no_i6pn
 *   to-endpoint   dst must be the veth's endpoint: not_local; that
 *                 endpoint: no_i6pn
 *   both veth     src: unknown_source, no_i6pn
 *   to-endpoint   where it entered: a local source from its own veth, a
 *                 remote one from the uplink: unbound_source (a local
 *                 source from the uplink: spoofed_source)
 *   both veth     dst: unknown_dest, no_i6pn
 *   to-fabric     where it entered: a local member's own veth:
 *                 unbound_source; that member: no_i6pn
 *   all hooks     members' workspace / region differ -> cross_workspace /
 *                 cross_region (membership is the truth; bits were a hint)
 *
 * Tunnels: a private packet with an end in workspace 0 (infrastructure, a
 * tunnel gateway's) skips the workspace-bits check and takes every step
 * above but the last, which i6pn_tunnel_rule replaces: a gateway reaches a
 * tunneled (address, protocol, port) and nothing else (not_tunneled); a
 * tenant reaches a gateway only as that port's reply (to_gateway). Region
 * bits and members still must agree (cross_region, unknown_*, no_i6pn), and
 * the source binding holds as for any private packet.
 *
 * Source binding, an invariant of the node rather than of a healthy veth:
 * a private packet is accepted only where it was proven to come from its
 * source. from-endpoint proves it (the source must be the address the veth
 * is bound to); from-fabric accepts only sources that are not local. The two
 * exits of the node then check where the packet entered (the skb's ingress
 * interface): to-endpoint accepts a private packet that entered from the
 * veth bound to exactly its source, or from the uplink with a non-local
 * source; to-fabric accepts one that entered from the veth bound to its
 * source. The binding is read from the source's own endpoints entry, whose
 * ifindex the agent sets only while that veth is bound to it. Everything
 * else (a veth without hooks, unknown, sealed or not yet converged, the
 * node's own stack, another interface) reaches no endpoint and leaves the
 * node not at all, whatever it forges and however far the agent has
 * converged: nothing on that path depends on the forged packet's claims.
 *
 * The TypeScript model in lib/policy.ts states the same rules; the golden
 * and property tests hold the programs to it, and `i6pnctl explain` answers
 * from it.
 *
 * Conventions of bpf/ (parse.h, this file, i6pn.bpf.c):
 *
 *   - A step of a decision returns an int that is either an enum
 *     i6pn_reason, the packet's verdict (a pass or a drop, final), or
 *     I6PN_CONTINUE (parse.h): no verdict yet, the caller goes on to its
 *     next check. A caller hands a verdict up unchanged:
 *
 *         r = i6pn_walk_ext_hdrs(data, data_end, pkt);
 *         if (r != I6PN_CONTINUE)
 *                 return r;
 *
 *     Nothing is negative, and 0 is I6PN_PASS_PRIVATE, never "no error".
 *     The i6pn_decide_* functions, and the last steps they end in
 *     (i6pn_members_agree, i6pn_tunnel_rule), always return a verdict; only
 *     i6pn_verdict() turns it into pass (1) or drop (0), counting it.
 *   - Predicates (i6pn_addr_*, i6pn_is_*, i6pn_icmp_error_about,
 *     i6pn_l4_port_is) return 0 or 1; accessors return a value
 *     (i6pn_ext_hdr, i6pn_class_of, i6pn_icmp_type: -1 for none).
 *   - The config is looked up once per packet, by the program's entry point
 *     (i6pn.bpf.c), and the same pointer goes to the decision and to
 *     i6pn_verdict(); a pull and a second decision reuse it.
 *   - Helpers are static __always_inline and take offsets or copies, never
 *     hand a pointer into the packet out; every read is checked against
 *     data_end; loops are bounded (I6PN_MAX_VLAN_TAGS, I6PN_MAX_EXT_HDRS);
 *     a check that exists for security says which attack it stops.
 *   - One table per idea: extension headers in i6pn_ext_hdr() (parse.h),
 *     reasons, hooks and verdicts in i6pn.h (the agent's copy generated from
 *     BTF).
 */
#ifndef I6PN_POLICY_H
#define I6PN_POLICY_H

#include "parse.h"
#include "maps.h"

#ifndef AF_INET6
#define AF_INET6 10
#endif

#define I6PN_NSEC_PER_SEC 1000000000ULL

/* Where a quoted or upper-layer header may start at most (bounds the verifier); a mask. */
#define I6PN_MAX_UPPER_OFF 0x1fff

/*
 * The upper-layer offset, bounded where the verifier sees it: the compiler
 * may test one copy of a value and add another to the packet pointer, so
 * the mask is applied after an empty asm that hides the test from it.
 */
static __always_inline __u32 i6pn_upper_off(const struct i6pn_pkt *pkt)
{
	__u32 off = pkt->upper_off;

	asm volatile("" : "+r"(off));
	return off & I6PN_MAX_UPPER_OFF;
}

enum i6pn_class {
	I6PN_CLASS_PUBLIC = 0,  /* neither address is in fdaa::/16 */
	I6PN_CLASS_MIXED = 1,   /* exactly one is */
	I6PN_CLASS_PRIVATE = 2, /* both are */
};

static __always_inline int i6pn_reason_passes(int reason)
{
	return reason == I6PN_PASS_PRIVATE || reason == I6PN_PASS_NOT_PRIVATE || reason == I6PN_PASS_LINK_SCOPE ||
	       reason == I6PN_PASS_ICMP_ERROR || reason == I6PN_PASS_FORWARD || reason == I6PN_PASS_RESOLVER ||
	       reason == I6PN_PASS_TUNNEL || reason == I6PN_PASS_TUNNEL_REPLY;
}

static __always_inline int i6pn_addr_private(const struct in6_addr *a)
{
	return a->in6_u.u6_addr16[0] == bpf_htons(0xfdaa);
}

/* fe80::/10: link-local unicast */
static __always_inline int i6pn_addr_link_local(const struct in6_addr *a)
{
	return (bpf_ntohs(a->in6_u.u6_addr16[0]) & 0xffc0) == 0xfe80;
}

/* fe80::/10 or ff02::/16: addresses no router forwards off the link */
static __always_inline int i6pn_addr_link_scope(const struct in6_addr *a)
{
	return i6pn_addr_link_local(a) || a->in6_u.u6_addr16[0] == bpf_htons(0xff02);
}

static __always_inline int i6pn_addr_unspecified(const struct in6_addr *a)
{
	return !(a->in6_u.u6_addr32[0] | a->in6_u.u6_addr32[1] | a->in6_u.u6_addr32[2] | a->in6_u.u6_addr32[3]);
}

static __always_inline int i6pn_same_workspace_bits(const struct in6_addr *a, const struct in6_addr *b)
{
	return a->in6_u.u6_addr16[1] == b->in6_u.u6_addr16[1] &&
	       a->in6_u.u6_addr16[2] == b->in6_u.u6_addr16[2];
}

static __always_inline __u16 i6pn_region_bits(const struct in6_addr *a)
{
	return bpf_ntohs(a->in6_u.u6_addr16[3]);
}

/* fdaa::53, the node resolver (I6PN_RESOLVER_LAST_GROUP) */
static __always_inline int i6pn_addr_resolver(const struct in6_addr *a)
{
	return a->in6_u.u6_addr32[0] == bpf_htonl(0xfdaa0000) && a->in6_u.u6_addr32[1] == 0 &&
	       a->in6_u.u6_addr32[2] == 0 && a->in6_u.u6_addr32[3] == bpf_htonl(I6PN_RESOLVER_LAST_GROUP);
}

static __always_inline int i6pn_addr_eq(const struct in6_addr *a, const struct in6_addr *b)
{
	return a->in6_u.u6_addr32[0] == b->in6_u.u6_addr32[0] &&
	       a->in6_u.u6_addr32[1] == b->in6_u.u6_addr32[1] &&
	       a->in6_u.u6_addr32[2] == b->in6_u.u6_addr32[2] &&
	       a->in6_u.u6_addr32[3] == b->in6_u.u6_addr32[3];
}

static __always_inline int i6pn_class_of(const struct i6pn_pkt *pkt)
{
	return i6pn_addr_private(&pkt->src) + i6pn_addr_private(&pkt->dst);
}

/* The address-bit checks of a private packet (no map lookup), so a flood costs the least. */
static __always_inline int i6pn_private_bits(const struct i6pn_pkt *pkt)
{
	if (!i6pn_same_workspace_bits(&pkt->src, &pkt->dst))
		return I6PN_DROP_CROSS_WORKSPACE;
	if (i6pn_region_bits(&pkt->src) != i6pn_region_bits(&pkt->dst))
		return I6PN_DROP_CROSS_REGION;
	return I6PN_CONTINUE;
}

/* ---------------------------------------------------------------- tunnels */

/* Workspace 0: infrastructure (tunnel gateways), never a tenant's address. */
static __always_inline int i6pn_addr_infra(const struct in6_addr *a)
{
	return a->in6_u.u6_addr16[1] == 0 && a->in6_u.u6_addr16[2] == 0;
}

/* A private packet between a gateway and a tenant (or another gateway): the tunnel rules decide it. */
static __always_inline int i6pn_tunnel_packet(const struct i6pn_pkt *pkt)
{
	return i6pn_addr_infra(&pkt->src) || i6pn_addr_infra(&pkt->dst);
}

/* The address-bit checks of a tunnel packet: a gateway serves its own region only. */
static __always_inline int i6pn_tunnel_bits(const struct i6pn_pkt *pkt)
{
	if (i6pn_region_bits(&pkt->src) != i6pn_region_bits(&pkt->dst))
		return I6PN_DROP_CROSS_REGION;
	return I6PN_CONTINUE;
}

#define I6PN_TCP_SYN 0x02
#define I6PN_TCP_ACK 0x10

/*
 * The last step for a tunnel packet, once both ends are live members (in
 * place of i6pn_members_agree). From a gateway (a member of workspace 0):
 * only to the (tenant address, protocol, destination port) of a tunnel. To a
 * gateway: only from a tunnel's (address, protocol, source port), and not a
 * TCP connection request (SYN without ACK): a tenant answers the gateway,
 * it never calls it. Without ports (not TCP or UDP, a later fragment, ICMPv6)
 * nothing passes.
 */
static __always_inline int i6pn_tunnel_rule(void *data, void *data_end, struct i6pn_pkt *pkt,
					    const struct i6pn_endpoint *src, const struct i6pn_endpoint *dst)
{
	const int from_gateway = i6pn_addr_infra(&pkt->src);
	const struct i6pn_endpoint *gw = from_gateway ? src : dst;
	const struct i6pn_endpoint *ep = from_gateway ? dst : src;
	const int refused = from_gateway ? I6PN_DROP_NOT_TUNNELED : I6PN_DROP_TO_GATEWAY;
	struct i6pn_tunnel_key key = {};
	__u8 tcp_flags = 0;
	__u8 *h;

	if (!(src->flags & I6PN_EP_I6PN) || !(dst->flags & I6PN_EP_I6PN))
		return I6PN_DROP_NO_I6PN;
	/* Membership is the truth: the gateway's end is in workspace 0, the other end is not. */
	if (gw->workspace != I6PN_INFRA_WORKSPACE)
		return I6PN_DROP_CROSS_WORKSPACE;
	/* Attack: a gateway reaching another gateway (or itself) through the fabric. */
	if (ep->workspace == I6PN_INFRA_WORKSPACE)
		return refused;
	if (gw->region != ep->region)
		return I6PN_DROP_CROSS_REGION;
	if ((pkt->upper != IPPROTO_TCP && pkt->upper != IPPROTO_UDP) || pkt->upper_off > I6PN_MAX_UPPER_OFF)
		return refused;
	h = data + i6pn_upper_off(pkt);
	if ((void *)(h + 4) > data_end) {
		pkt->short_read = 1;
		return refused;
	}
	if (pkt->upper == IPPROTO_TCP) {
		if ((void *)(h + 14) > data_end) {
			pkt->short_read = 1;
			return refused;
		}
		tcp_flags = h[13];
	}
	__builtin_memcpy(&key.addr, from_gateway ? &pkt->dst : &pkt->src, sizeof(key.addr));
	key.proto = pkt->upper;
	key.port = from_gateway ? ((__u16)h[2] << 8 | h[3]) : ((__u16)h[0] << 8 | h[1]);
	/* Attack: a gateway reaching a port, an endpoint or a workspace no tunnel names. */
	if (!bpf_map_lookup_elem(&tunnels, &key))
		return refused;
	if (from_gateway)
		return I6PN_PASS_TUNNEL;
	/* Attack: a tenant opening a connection to a gateway from its tunneled port. */
	if (pkt->upper == IPPROTO_TCP && (tcp_flags & (I6PN_TCP_SYN | I6PN_TCP_ACK)) == I6PN_TCP_SYN)
		return I6PN_DROP_TO_GATEWAY;
	return I6PN_PASS_TUNNEL_REPLY;
}

/* ---------------------------------------------------------------- members */

/* Membership is the truth: both ends live, with i6pn, same workspace and region. */
static __always_inline int i6pn_members_agree(const struct i6pn_endpoint *src,
					      const struct i6pn_endpoint *dst)
{
	if (!(src->flags & I6PN_EP_I6PN) || !(dst->flags & I6PN_EP_I6PN))
		return I6PN_DROP_NO_I6PN;
	if (src->workspace != dst->workspace)
		return I6PN_DROP_CROSS_WORKSPACE;
	if (src->region != dst->region)
		return I6PN_DROP_CROSS_REGION;
	return I6PN_PASS_PRIVATE;
}

/*
 * The ICMPv6 type of a walked packet, or -1 when its upper layer is not
 * ICMPv6 (or the type is not in the packet: short_read says so, for a TC
 * hook to pull a non-linear skb's headers and decide again).
 */
static __always_inline int i6pn_icmp_type(void *data, void *data_end, struct i6pn_pkt *pkt)
{
	__u8 *h;

	if (pkt->upper != IPPROTO_ICMPV6 || pkt->upper_off > I6PN_MAX_UPPER_OFF)
		return -1;
	h = data + i6pn_upper_off(pkt);
	if ((void *)(h + 1) > data_end) {
		pkt->short_read = 1;
		return -1;
	}
	return h[0];
}

/*
 * An ICMPv6 error (destination unreachable, packet too big, time exceeded,
 * parameter problem) whose quoted packet was sent by `owner`: path-MTU
 * discovery and traceroute need these from routers, which have no private
 * address. The quoted fixed header must be there whole.
 */
static __always_inline int i6pn_icmp_error_about(void *data, void *data_end, struct i6pn_pkt *pkt,
						 const struct in6_addr *owner)
{
	struct in6_addr quoted_src;
	__u8 *h;

	if (pkt->upper != IPPROTO_ICMPV6 || pkt->upper_off > I6PN_MAX_UPPER_OFF)
		return 0;
	h = data + i6pn_upper_off(pkt);
	if ((void *)(h + 8 + sizeof(struct ipv6hdr)) > data_end) {
		pkt->short_read = 1;
		return 0;
	}
	if (h[0] < 1 || h[0] > 4)
		return 0;
	__builtin_memcpy(&quoted_src, h + 8 + 8, sizeof(quoted_src));
	return i6pn_addr_eq(&quoted_src, owner);
}

/* NDP and MLD a container sends to its node: MLD reports/done, RS, NS, NA. */
static __always_inline int i6pn_ndp_from_endpoint(int type)
{
	return type == 131 || type == 132 || type == 133 || type == 135 || type == 136 || type == 143;
}

/* NDP and MLD a node sends to a container: MLD query/reports/done, RA, NS, NA, redirect. */
static __always_inline int i6pn_ndp_to_endpoint(int type)
{
	return (type >= 130 && type <= 132) || (type >= 134 && type <= 137) || type == 143;
}

/*
 * A mixed packet seen from the fabric side (from-fabric, to-fabric): only an
 * ICMPv6 error from a non-private router about a packet the private
 * destination sent passes. A private address paired with any other
 * non-private one is an attempt to reach in or leak out.
 */
static __always_inline int i6pn_mixed_at_uplink(void *data, void *data_end, struct i6pn_pkt *pkt)
{
	int r;

	if (i6pn_addr_private(&pkt->src))
		return I6PN_DROP_OUTSIDE;
	r = i6pn_walk_ext_hdrs(data, data_end, pkt);
	if (r != I6PN_CONTINUE)
		return r;
	return i6pn_icmp_error_about(data, data_end, pkt, &pkt->dst) ? I6PN_PASS_ICMP_ERROR : I6PN_DROP_OUTSIDE;
}

/* The uplink hooks start alike: parse; what is not IPv6 or has no private address is not ours. */
static __always_inline int i6pn_parse_at_uplink(void *data, void *data_end, struct i6pn_pkt *pkt)
{
	int r = i6pn_parse_l3(data, data_end, pkt);

	if (r != I6PN_CONTINUE)
		return r; /* a drop, or not IPv6: pass_not_private */
	if (i6pn_class_of(pkt) == I6PN_CLASS_PUBLIC)
		return I6PN_PASS_NOT_PRIVATE;
	return I6PN_CONTINUE;
}

static __always_inline int i6pn_decide_from_fabric(void *data, void *data_end, const struct i6pn_config *cfg,
						   struct i6pn_pkt *pkt)
{
	int r = i6pn_parse_at_uplink(data, data_end, pkt);

	if (r != I6PN_CONTINUE)
		return r;

	struct i6pn_endpoint *dst;

	if (i6pn_class_of(pkt) == I6PN_CLASS_MIXED) {
		r = i6pn_mixed_at_uplink(data, data_end, pkt);
		if (r != I6PN_PASS_ICMP_ERROR)
			return r;
		/* The error is for a live local endpoint, or for nobody. */
		dst = bpf_map_lookup_elem(&endpoints, &pkt->dst);
		if (!dst)
			return I6PN_DROP_UNKNOWN_DEST;
		if (!(dst->flags & I6PN_EP_LOCAL))
			return I6PN_DROP_NOT_LOCAL;
		return r;
	}
	const int tunnel = i6pn_tunnel_packet(pkt);

	r = tunnel ? i6pn_tunnel_bits(pkt) : i6pn_private_bits(pkt);
	if (r != I6PN_CONTINUE)
		return r;
	if (i6pn_region_bits(&pkt->dst) != cfg->region)
		return I6PN_DROP_NOT_LOCAL;
	r = i6pn_walk_ext_hdrs(data, data_end, pkt);
	if (r != I6PN_CONTINUE)
		return r;

	dst = bpf_map_lookup_elem(&endpoints, &pkt->dst);
	if (!dst)
		return I6PN_DROP_UNKNOWN_DEST;
	if (!(dst->flags & I6PN_EP_LOCAL))
		return I6PN_DROP_NOT_LOCAL;

	struct i6pn_endpoint *src = bpf_map_lookup_elem(&endpoints, &pkt->src);

	if (!src)
		return I6PN_DROP_UNKNOWN_SOURCE;
	/* Attack: a remote sender claiming the address of one of our own endpoints. */
	if (src->flags & I6PN_EP_LOCAL)
		return I6PN_DROP_SPOOFED_SOURCE;
	pkt->deliver_to = dst->ifindex;
	return tunnel ? i6pn_tunnel_rule(data, data_end, pkt, src, dst) : i6pn_members_agree(src, dst);
}

/*
 * Did a packet from this local member enter from the veth bound to it? The
 * one proof of a local source (from-endpoint checked it on the way in). The
 * agent writes a local member's ifindex only while its veth is bound to it
 * (hooked, its local_ifaces entry written, not sealed), else 0, so this costs
 * no lookup beyond the source's own.
 */
static __always_inline int i6pn_entered_from_own_veth(const struct i6pn_endpoint *src, __u32 ingress)
{
	return (src->flags & I6PN_EP_LOCAL) && src->ifindex && src->ifindex == ingress;
}

/*
 * TC egress on the uplink: a private packet leaves the node only if it
 * entered from the hooked veth bound to its source. Public traffic is not
 * ours; mixed traffic is only the node's ICMPv6 errors about a remote
 * private sender's packets.
 */
static __always_inline int i6pn_decide_to_fabric(void *data, void *data_end, __u32 ingress, struct i6pn_pkt *pkt)
{
	int r = i6pn_parse_at_uplink(data, data_end, pkt);

	if (r != I6PN_CONTINUE)
		return r;
	if (i6pn_class_of(pkt) == I6PN_CLASS_MIXED)
		return i6pn_mixed_at_uplink(data, data_end, pkt);
	struct i6pn_endpoint *src = bpf_map_lookup_elem(&endpoints, &pkt->src);

	/* Attack: a forged private packet from an unhooked, unknown or sealed veth, or the node. */
	if (!src || !i6pn_entered_from_own_veth(src, ingress))
		return I6PN_DROP_UNBOUND_SOURCE;
	if (!(src->flags & I6PN_EP_I6PN))
		return I6PN_DROP_NO_I6PN;
	return I6PN_PASS_PRIVATE;
}

/*
 * What an i6pn veth carries besides private traffic: NDP and MLD between the
 * endpoint and its node, with the endpoint's own addresses (its private one,
 * a link-local one, or the unspecified one of DAD); ICMPv6 errors about a
 * packet the endpoint sent; and, when the agent forwards non-private traffic,
 * the endpoint's own traffic to non-private destinations other than the node
 * and what comes back. Nothing else: the node's own addresses and ports are
 * not reachable from a container.
 */
static __always_inline int i6pn_veth_not_private(void *ctx, void *data, void *data_end, __u32 ifindex,
						 const struct i6pn_config *cfg, const struct i6pn_local_iface *iface,
						 struct i6pn_pkt *pkt, int cls, const int to_endpoint)
{
	const struct in6_addr *own = &iface->addr;
	int r = i6pn_walk_ext_hdrs(data, data_end, pkt);
	int type;

	if (r != I6PN_CONTINUE)
		return r;
	type = i6pn_icmp_type(data, data_end, pkt);
	if (!to_endpoint) {
		if (i6pn_ndp_from_endpoint(type) && i6pn_addr_link_scope(&pkt->dst)) {
			if (i6pn_addr_eq(&pkt->src, own) || i6pn_addr_link_local(&pkt->src) ||
			    i6pn_addr_unspecified(&pkt->src))
				return I6PN_PASS_LINK_SCOPE;
			/* Attack: someone else's address, so the node's answers go to a victim. */
			return I6PN_DROP_SPOOFED_SOURCE;
		}
		if (cls == I6PN_CLASS_PUBLIC)
			return I6PN_DROP_NON_PRIVATE;
		if (!i6pn_addr_private(&pkt->src))
			return I6PN_DROP_OUTSIDE;
		if (!i6pn_addr_eq(&pkt->src, own))
			return I6PN_DROP_SPOOFED_SOURCE;
		if (!(cfg->flags & I6PN_CFG_FORWARD_NON_PRIVATE) || i6pn_addr_link_scope(&pkt->dst))
			return I6PN_DROP_OUTSIDE;

		/* Forwarding: anywhere the node routes to, but never to the node itself. */
		struct bpf_fib_lookup fib = {};
		long rc;

		fib.family = AF_INET6;
		fib.ifindex = ifindex;
		fib.l4_protocol = pkt->upper;
		__builtin_memcpy(fib.ipv6_src, &pkt->src, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, &pkt->dst, sizeof(fib.ipv6_dst));
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED ||
		    rc == BPF_FIB_LKUP_RET_UNSUPP_LWT || rc < 0)
			return I6PN_DROP_TO_NODE;
		return I6PN_PASS_FORWARD;
	}
	if (i6pn_ndp_to_endpoint(type) && (i6pn_addr_link_local(&pkt->src) || i6pn_addr_unspecified(&pkt->src))) {
		if (i6pn_addr_eq(&pkt->dst, own) || i6pn_addr_link_scope(&pkt->dst))
			return I6PN_PASS_LINK_SCOPE;
		return I6PN_DROP_NOT_LOCAL;
	}
	if (cls == I6PN_CLASS_PUBLIC)
		return I6PN_DROP_NON_PRIVATE;
	if (!i6pn_addr_private(&pkt->dst))
		return I6PN_DROP_OUTSIDE;
	if (!i6pn_addr_eq(&pkt->dst, own))
		return I6PN_DROP_NOT_LOCAL;
	if (i6pn_icmp_error_about(data, data_end, pkt, own))
		return I6PN_PASS_ICMP_ERROR;
	if ((cfg->flags & I6PN_CFG_FORWARD_NON_PRIVATE) && !i6pn_addr_link_scope(&pkt->src))
		return I6PN_PASS_FORWARD;
	return I6PN_DROP_OUTSIDE;
}

/*
 * Whether a walked packet is UDP or TCP with `port` as its source (`src`) or
 * destination port. A later fragment has no ports and is not DNS; a port
 * beyond the linear data sets short_read for the TC hook to pull.
 */
static __always_inline int i6pn_l4_port_is(void *data, void *data_end, struct i6pn_pkt *pkt, __u16 port, const int src)
{
	__u8 *h;

	if ((pkt->upper != IPPROTO_UDP && pkt->upper != IPPROTO_TCP) || pkt->upper_off > I6PN_MAX_UPPER_OFF)
		return 0;
	h = data + i6pn_upper_off(pkt);
	if ((void *)(h + 4) > data_end) {
		pkt->short_read = 1;
		return 0;
	}
	return ((__u16)h[src ? 0 : 2] << 8 | h[src ? 1 : 3]) == port;
}

/*
 * DNS between an endpoint and its node's resolver, the one sanctioned way
 * from a container to its node: a query from the veth's own address to UDP or
 * TCP port 53 of fdaa::53, and the answer from port 53 of fdaa::53, made by
 * the node's own stack, to the veth's own address. An endpoint without i6pn
 * may ask too (the resolver refuses it by name: REFUSED, not a timeout). The
 * resolver identifies the querier by the source address, which this proves.
 */
static __always_inline int i6pn_resolver_veth(void *data, void *data_end, __u32 ingress,
					      const struct i6pn_local_iface *iface, struct i6pn_pkt *pkt,
					      const int to_endpoint)
{
	int r = i6pn_walk_ext_hdrs(data, data_end, pkt);

	if (r != I6PN_CONTINUE)
		return r;
	if (to_endpoint) {
		if (!i6pn_addr_eq(&pkt->dst, &iface->addr))
			return I6PN_DROP_NOT_LOCAL;
		/* Attack: the resolver's address on a packet that did not come from the node's own stack. */
		if (ingress)
			return I6PN_DROP_UNBOUND_SOURCE;
	} else if (!i6pn_addr_eq(&pkt->src, &iface->addr)) {
		/* Attack: a query under another endpoint's address, to be answered about its workspace. */
		return I6PN_DROP_SPOOFED_SOURCE;
	}
	/* Attack: any other port or protocol of the node, through the resolver's address. */
	if (!i6pn_l4_port_is(data, data_end, pkt, I6PN_DNS_PORT, to_endpoint))
		return I6PN_DROP_RESOLVER_NOT_DNS;
	return I6PN_PASS_RESOLVER;
}

/*
 * The two veth hooks. When the container sends (from-endpoint) the veth's
 * own address must be the source, and a mismatch is spoofing; when it
 * receives (to-endpoint) it must be the destination, and the source must be
 * proven by where the packet entered. `to_endpoint` is a constant at each
 * call, so each program keeps only its own branch.
 */
static __always_inline int i6pn_decide_veth(void *ctx, void *data, void *data_end, __u32 ifindex, __u32 ingress,
					    const struct i6pn_config *cfg, struct i6pn_pkt *pkt,
					    const int to_endpoint)
{
	struct i6pn_local_iface *iface;
	int r = i6pn_parse_l3(data, data_end, pkt);
	/* Not IPv6: not ours at the uplink, but a veth carries i6pn only (non_private, below). */
	const int ipv6 = r == I6PN_CONTINUE;
	int cls = I6PN_CLASS_PUBLIC;
	int resolver = 0;
	int tunnel = 0;

	if (!ipv6 && r != I6PN_PASS_NOT_PRIVATE)
		return r;
	if (ipv6) {
		cls = i6pn_class_of(pkt);
		/* The node resolver's side of the packet: the destination going in, the source going out. */
		resolver = cls == I6PN_CLASS_PRIVATE && i6pn_addr_resolver(to_endpoint ? &pkt->src : &pkt->dst);
		/* Cheapest first: what the addresses alone forbid costs no lookup. */
		/* The resolver is in workspace 0 too, but it is no tunnel end: DNS is judged apart. */
		if (cls == I6PN_CLASS_PRIVATE && !resolver) {
			tunnel = i6pn_tunnel_packet(pkt);
			r = tunnel ? i6pn_tunnel_bits(pkt) : i6pn_private_bits(pkt);
			if (r != I6PN_CONTINUE)
				return r;
		}
	}
	iface = bpf_map_lookup_elem(&local_ifaces, &ifindex);
	if (!iface)
		return I6PN_DROP_UNKNOWN_IFACE;
	/* A revoked endpoint's veth: nothing in, nothing out, until it is gone. */
	if (iface->flags & I6PN_EP_SEALED)
		return I6PN_DROP_SEALED;
	if (!ipv6)
		return I6PN_DROP_NON_PRIVATE;
	if (cls != I6PN_CLASS_PRIVATE)
		return i6pn_veth_not_private(ctx, data, data_end, ifindex, cfg, iface, pkt, cls, to_endpoint);
	if (resolver)
		return i6pn_resolver_veth(data, data_end, ingress, iface, pkt, to_endpoint);
	r = i6pn_walk_ext_hdrs(data, data_end, pkt);
	if (r != I6PN_CONTINUE)
		return r;
	if (to_endpoint) {
		/* Only the veth's own endpoint is reachable through it. */
		if (!i6pn_addr_eq(&pkt->dst, &iface->addr))
			return I6PN_DROP_NOT_LOCAL;
	} else {
		/* Attack: a container sending with another endpoint's address. */
		if (!i6pn_addr_eq(&pkt->src, &iface->addr))
			return I6PN_DROP_SPOOFED_SOURCE;
	}
	if (!(iface->flags & I6PN_EP_I6PN))
		return I6PN_DROP_NO_I6PN;

	struct i6pn_endpoint *src = bpf_map_lookup_elem(&endpoints, &pkt->src);

	if (!src)
		return I6PN_DROP_UNKNOWN_SOURCE;
	if (!(src->flags & I6PN_EP_I6PN))
		return I6PN_DROP_NO_I6PN;
	if (to_endpoint) {
		int from_uplink = cfg->uplink_ifindex && ingress == cfg->uplink_ifindex;

		if (src->flags & I6PN_EP_LOCAL) {
			/* Attack: a local address from the fabric (spoofed), or from a veth not bound to it or the node. */
			if (!i6pn_entered_from_own_veth(src, ingress))
				return from_uplink ? I6PN_DROP_SPOOFED_SOURCE : I6PN_DROP_UNBOUND_SOURCE;
		} else if (!from_uplink) {
			/* Attack: a remote member's address from inside the node. */
			return I6PN_DROP_UNBOUND_SOURCE;
		}
	}

	struct i6pn_endpoint *dst = bpf_map_lookup_elem(&endpoints, &pkt->dst);

	if (!dst)
		return I6PN_DROP_UNKNOWN_DEST;
	if (!to_endpoint && (dst->flags & I6PN_EP_LOCAL))
		pkt->deliver_to = dst->ifindex;
	return tunnel ? i6pn_tunnel_rule(data, data_end, pkt, src, dst) : i6pn_members_agree(src, dst);
}

/*
 * What a drop event says of the packet beyond its addresses: the upper-layer
 * protocol, and its ports or ICMPv6 type, from what the decision parsed: the
 * upper layer the chain walk found, or the fixed header's next header when
 * it is not an extension header. A drop decided before the walk (on the
 * address bits) of a packet with extension headers reports the first
 * header's number and no ports.
 *
 * Returned packed, (event flags << 40) | (protocol << 32) | the first four
 * bytes of the upper-layer header, by a global function: the verifier checks
 * it once, for any input, instead of once more for every parse state the
 * decision can end in (inlined, it explored six times more for
 * from_fabric_tc, and doubled the programs' load time).
 */
static __always_inline __u64 i6pn_event_l4(void *data, void *data_end, __u32 l4_off, __u32 nexthdr, __u32 upper_off,
					   __u32 upper)
{
	__u64 flags = I6PN_EVENT_IPV6;
	__u32 off = upper_off;
	__u8 *h;

	if (!l4_off)
		return 0; /* not IPv6 */
	if (!upper_off) {
		if (i6pn_is_ext_hdr(nexthdr))
			return flags << 40 | (__u64)(nexthdr & 0xff) << 32;
		upper = nexthdr;
		off = l4_off;
	}
	upper &= 0xff;
	if ((upper != IPPROTO_TCP && upper != IPPROTO_UDP && upper != IPPROTO_ICMPV6) || off > I6PN_MAX_UPPER_OFF)
		return flags << 40 | (__u64)upper << 32;
	/* The bound where the verifier sees it (see i6pn_upper_off). */
	asm volatile("" : "+r"(off));
	h = data + (off & I6PN_MAX_UPPER_OFF);
	if ((void *)(h + 4) > data_end)
		return flags << 40 | (__u64)upper << 32;
	flags |= upper == IPPROTO_ICMPV6 ? I6PN_EVENT_ICMP : I6PN_EVENT_PORTS;
	return flags << 40 | (__u64)upper << 32 | (__u64)h[0] << 24 | (__u64)h[1] << 16 | (__u64)h[2] << 8 | h[3];
}

__attribute__((noinline)) __u64 i6pn_event_l4_xdp(struct xdp_md *ctx, __u32 l4_off, __u32 nexthdr, __u32 upper_off,
						  __u32 upper)
{
	return i6pn_event_l4((void *)(long)ctx->data, (void *)(long)ctx->data_end, l4_off, nexthdr, upper_off, upper);
}

__attribute__((noinline)) __u64 i6pn_event_l4_skb(struct __sk_buff *skb, __u32 l4_off, __u32 nexthdr, __u32 upper_off,
						  __u32 upper)
{
	return i6pn_event_l4((void *)(long)skb->data, (void *)(long)skb->data_end, l4_off, nexthdr, upper_off, upper);
}

static __always_inline void i6pn_event_upper(void *ctx, const struct i6pn_pkt *pkt, struct i6pn_drop_event *ev,
					     const int tc)
{
	__u64 l4 = tc ? i6pn_event_l4_skb(ctx, pkt->l4_off, pkt->nexthdr, pkt->upper_off, pkt->upper)
		      : i6pn_event_l4_xdp(ctx, pkt->l4_off, pkt->nexthdr, pkt->upper_off, pkt->upper);
	__u8 flags = (l4 >> 40) & 0xff;

	ev->flags = flags;
	ev->proto = (l4 >> 32) & 0xff;
	if (flags & I6PN_EVENT_ICMP) {
		ev->icmp_type = (l4 >> 24) & 0xff;
		ev->icmp_code = (l4 >> 16) & 0xff;
	} else if (flags & I6PN_EVENT_PORTS) {
		ev->sport = (l4 >> 16) & 0xffff;
		ev->dport = l4 & 0xffff;
	}
}

/*
 * Sample a drop into the ring buffer, at most cfg->events_per_sec per CPU
 * and second. Every drop past the budget is counted (event_budget.used, then
 * event_stats when its window closes), as is every event the ring buffer had
 * no room for: a drop is an event or a count, never nothing.
 */
static __always_inline void i6pn_emit_event(void *ctx, void *data, void *data_end, const int tc,
					    const struct i6pn_config *cfg, __u32 hook, __u32 verdict, __u32 reason,
					    const struct i6pn_pkt *pkt, __u32 ifindex, __u32 len)
{
	__u32 zero = 0;
	struct i6pn_event_budget *b;
	struct i6pn_event_stats *stats;
	struct i6pn_drop_event *ev;
	__u64 now;

	if (!cfg->events_per_sec)
		return;
	b = bpf_map_lookup_elem(&event_budget, &zero);
	if (!b)
		return;
	if (b->used >= cfg->events_per_sec) {
		/* Over budget: look at the clock only every 64th drop. */
		if ((++b->used & 63) != 0)
			return;
		now = bpf_ktime_get_ns();
		if (now - b->window_start_ns < I6PN_NSEC_PER_SEC)
			return;
		/* The window closes: all its drops but the budget (and this one, the next window's) were not sampled. */
		stats = bpf_map_lookup_elem(&event_stats, &zero);
		if (stats)
			stats->over_budget += b->used - 1 - cfg->events_per_sec;
		b->window_start_ns = now;
		b->used = 0;
	}
	now = bpf_ktime_get_ns();
	if (now - b->window_start_ns >= I6PN_NSEC_PER_SEC) {
		b->window_start_ns = now;
		b->used = 0;
	}
	b->used++;
	ev = bpf_ringbuf_reserve(&drop_events, sizeof(*ev), 0);
	if (!ev) {
		stats = bpf_map_lookup_elem(&event_stats, &zero);
		if (stats)
			stats->ring_full++;
		return;
	}
	ev->ts_ns = now;
	__builtin_memcpy(&ev->src, &pkt->src, sizeof(ev->src));
	__builtin_memcpy(&ev->dst, &pkt->dst, sizeof(ev->dst));
	ev->ifindex = ifindex;
	ev->len = len;
	ev->hook = hook;
	ev->verdict = verdict;
	ev->reason = reason;
	ev->proto = 0;
	ev->flags = 0;
	ev->icmp_type = 0;
	ev->icmp_code = 0;
	ev->sport = 0;
	ev->dport = 0;
	ev->pad = 0;
	i6pn_event_upper(ctx, pkt, ev, tc);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void i6pn_count(__u32 hook, __u32 verdict, __u32 reason, __u32 len)
{
	__u32 idx = i6pn_counter_index(hook, verdict, reason);
	struct i6pn_counter *c = bpf_map_lookup_elem(&counters, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/*
 * Count the decision and say whether the packet goes on: 1 to pass, 0 to
 * drop. In monitor mode a drop passes and is counted as a would-drop.
 */
static __always_inline int i6pn_verdict(void *ctx, void *data, void *data_end, const int tc,
					const struct i6pn_config *cfg, __u32 hook, int reason, const struct i6pn_pkt *pkt,
					__u32 ifindex, __u32 len)
{
	__u32 verdict;

	if (i6pn_reason_passes(reason)) {
		i6pn_count(hook, I6PN_VERDICT_PASS, reason, len);
		return 1;
	}
	if (reason < 0 || reason >= I6PN_REASON_MAX)
		reason = I6PN_DROP_MALFORMED; /* cannot happen; fail closed */
	verdict = cfg->mode == I6PN_MODE_MONITOR ? I6PN_VERDICT_WOULD_DROP : I6PN_VERDICT_DROP;
	i6pn_count(hook, verdict, reason, len);
	i6pn_emit_event(ctx, data, data_end, tc, cfg, hook, verdict, reason, pkt, ifindex, len);
	return verdict == I6PN_VERDICT_WOULD_DROP;
}

#endif /* I6PN_POLICY_H */
