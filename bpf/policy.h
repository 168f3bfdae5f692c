/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The i6pn policy: which private packets pass, and why the others do not.
 *
 * A packet is private when either address is in fdaa::/16. It passes only if
 * both addresses are live members, with private networking, of the same
 * workspace and region, and each hook's own condition holds (below). Checks
 * run cheapest first, and a packet reports the first check it fails:
 *
 *   all hooks     parse (truncated, malformed, VLAN depth)
 *                 no private address                -> pass (not ours)
 *                 private with non-private peer     -> outside
 *                   (except ICMPv6 with a link-scope peer: neighbour
 *                    discovery, which no router forwards off the link)
 *                 workspace bits differ             -> cross_workspace
 *                 region bits differ                -> cross_region
 *   from-fabric   dst region bits != node region    -> not_local
 *   all hooks     extension header chain            -> routing_header,
 *                                                      ext_hdr_denied/limit
 *   from-fabric   dst: unknown_dest, not_local (not on this node), no_i6pn
 *                 src: unknown_source, spoofed_source (a local endpoint's
 *                      address arriving from outside the node), no_i6pn
 *   from-endpoint veth: unknown_iface; src must be the veth's endpoint:
 *                 spoofed_source; that endpoint: no_i6pn
 *                 src: unknown_source, no_i6pn; dst: unknown_dest, no_i6pn
 *   to-endpoint   veth: unknown_iface; dst must be the veth's endpoint:
 *                 not_local; that endpoint: no_i6pn
 *                 src: unknown_source, no_i6pn; dst: unknown_dest, no_i6pn
 *   all hooks     members' workspace / region differ -> cross_workspace /
 *                 cross_region (membership is the truth; bits were a hint)
 *
 * The TypeScript reference model in test/policy-model.ts states the same
 * rules; the golden and property tests hold the programs to it.
 */
#ifndef I6PN_POLICY_H
#define I6PN_POLICY_H

#include "parse.h"
#include "maps.h"

#define I6PN_CONTINUE I6PN_REASON_MAX /* sentinel: no verdict yet */
#define I6PN_NSEC_PER_SEC 1000000000ULL

static __always_inline int i6pn_addr_private(const struct in6_addr *a)
{
	return a->in6_u.u6_addr16[0] == bpf_htons(0xfdaa);
}

/* fe80::/10 or ff02::/16: addresses no router forwards off the link */
static __always_inline int i6pn_addr_link_scope(const struct in6_addr *a)
{
	__u16 w = bpf_ntohs(a->in6_u.u6_addr16[0]);

	return (w & 0xffc0) == 0xfe80 || w == 0xff02;
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

static __always_inline int i6pn_addr_eq(const struct in6_addr *a, const struct in6_addr *b)
{
	return a->in6_u.u6_addr32[0] == b->in6_u.u6_addr32[0] &&
	       a->in6_u.u6_addr32[1] == b->in6_u.u6_addr32[1] &&
	       a->in6_u.u6_addr32[2] == b->in6_u.u6_addr32[2] &&
	       a->in6_u.u6_addr32[3] == b->in6_u.u6_addr32[3];
}

/*
 * The checks every hook starts with, from the addresses alone (no map
 * lookup), so that a flood of forbidden packets costs the least.
 */
static __always_inline int i6pn_address_checks(const struct i6pn_pkt *pkt)
{
	int src_private = i6pn_addr_private(&pkt->src);
	int dst_private = i6pn_addr_private(&pkt->dst);

	if (!src_private && !dst_private)
		return I6PN_PASS_NOT_PRIVATE;
	if (!src_private || !dst_private) {
		const struct in6_addr *peer = src_private ? &pkt->dst : &pkt->src;

		if (pkt->nexthdr == IPPROTO_ICMPV6 && i6pn_addr_link_scope(peer))
			return I6PN_PASS_NOT_PRIVATE;
		/* Attack: reaching a private address from outside, or leaking one out. */
		return I6PN_DROP_OUTSIDE;
	}
	if (!i6pn_same_workspace_bits(&pkt->src, &pkt->dst))
		return I6PN_DROP_CROSS_WORKSPACE;
	if (i6pn_region_bits(&pkt->src) != i6pn_region_bits(&pkt->dst))
		return I6PN_DROP_CROSS_REGION;
	return I6PN_CONTINUE;
}

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

/* Parse, then the address-bit checks: I6PN_CONTINUE when membership must decide. */
static __always_inline int i6pn_parse_and_check_bits(void *data, void *data_end, struct i6pn_pkt *pkt)
{
	int r = i6pn_parse_l3(data, data_end, pkt);

	if (r == I6PN_PARSE_NOT_IPV6)
		return I6PN_PASS_NOT_PRIVATE;
	if (r < 0)
		return -r;
	return i6pn_address_checks(pkt);
}

static __always_inline int i6pn_decide_from_fabric(void *data, void *data_end, struct i6pn_pkt *pkt)
{
	int r = i6pn_parse_and_check_bits(data, data_end, pkt);

	if (r != I6PN_CONTINUE)
		return r;

	__u32 zero = 0;
	struct i6pn_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || i6pn_region_bits(&pkt->dst) != cfg->region)
		return I6PN_DROP_NOT_LOCAL;
	r = i6pn_walk_ext_hdrs(data, data_end, pkt->l4_off, pkt->nexthdr);
	if (r)
		return r;

	struct i6pn_endpoint *dst = bpf_map_lookup_elem(&endpoints, &pkt->dst);

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
	return i6pn_members_agree(src, dst);
}

/*
 * The two veth hooks make the same checks but one: which address must be the
 * veth's own endpoint. When the container sends (from-endpoint) it is the
 * source, and a mismatch is spoofing; when it receives (to-endpoint) it is the
 * destination, and a mismatch is a packet for someone else. `to_endpoint` is
 * a constant at each call, so each program keeps only its own branch.
 */
static __always_inline int i6pn_decide_veth(void *data, void *data_end, __u32 ifindex,
					    struct i6pn_pkt *pkt, const int to_endpoint)
{
	int r = i6pn_parse_and_check_bits(data, data_end, pkt);

	if (r != I6PN_CONTINUE)
		return r;
	r = i6pn_walk_ext_hdrs(data, data_end, pkt->l4_off, pkt->nexthdr);
	if (r)
		return r;

	struct i6pn_local_iface *iface = bpf_map_lookup_elem(&local_ifaces, &ifindex);

	if (!iface)
		return I6PN_DROP_UNKNOWN_IFACE;
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

	struct i6pn_endpoint *dst = bpf_map_lookup_elem(&endpoints, &pkt->dst);

	if (!dst)
		return I6PN_DROP_UNKNOWN_DEST;
	return i6pn_members_agree(src, dst);
}

/* Sample a drop into the ring buffer, at most cfg->events_per_sec per CPU. */
static __always_inline void i6pn_emit_event(const struct i6pn_config *cfg, __u32 hook, __u32 verdict,
					    __u32 reason, const struct i6pn_pkt *pkt, __u32 ifindex,
					    __u32 len)
{
	__u32 zero = 0;
	struct i6pn_event_budget *b;
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
	if (!ev)
		return;
	ev->ts_ns = now;
	__builtin_memcpy(&ev->src, &pkt->src, sizeof(ev->src));
	__builtin_memcpy(&ev->dst, &pkt->dst, sizeof(ev->dst));
	ev->ifindex = ifindex;
	ev->len = len;
	ev->hook = hook;
	ev->verdict = verdict;
	ev->reason = reason;
	ev->pad = 0;
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
static __always_inline int i6pn_verdict(__u32 hook, int reason, const struct i6pn_pkt *pkt,
					__u32 ifindex, __u32 len)
{
	__u32 zero = 0, verdict;
	struct i6pn_config *cfg;

	if (reason == I6PN_PASS_PRIVATE || reason == I6PN_PASS_NOT_PRIVATE) {
		i6pn_count(hook, I6PN_VERDICT_PASS, reason, len);
		return 1;
	}
	if (reason < 0 || reason >= I6PN_REASON_MAX)
		reason = I6PN_DROP_MALFORMED; /* cannot happen; fail closed */
	cfg = bpf_map_lookup_elem(&config, &zero);
	verdict = cfg && cfg->mode == I6PN_MODE_MONITOR ? I6PN_VERDICT_WOULD_DROP : I6PN_VERDICT_DROP;
	i6pn_count(hook, verdict, reason, len);
	if (cfg)
		i6pn_emit_event(cfg, hook, verdict, reason, pkt, ifindex, len);
	return verdict == I6PN_VERDICT_WOULD_DROP;
}

#endif /* I6PN_POLICY_H */
