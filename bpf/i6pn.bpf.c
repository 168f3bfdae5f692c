// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * The four i6pn enforcement points (from-fabric in two flavours: XDP, and TC
 * for devices where XDP costs more). The policy lives in policy.h; these are
 * only the hooks' entry points: read the context and the config (once per
 * packet), decide, count, act.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "i6pn.h"
#include "policy.h"

/*
 * Headers a TC program reads must be in the skb's linear part, and almost
 * always are. Pulling unconditionally would make the kernel copy and
 * un-clone the head of every cloned packet (TCP keeps a clone of each
 * segment it sends), so a TC hook decides on what is linear, and only when
 * a read stopped at the linear end of a longer packet does it pull (up to
 * I6PN_PULL_LEN bytes, what the parser may walk) and decide again. The
 * verdict is the one a fully linear packet gets; a failed pull keeps the
 * first (a drop: truncated, or what a header it could not see would have
 * passed).
 */
#define I6PN_PULL_LEN 512

static __always_inline const struct i6pn_config *i6pn_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

#ifdef I6PN_BUILD_MARKER
/*
 * A build with one more map, counting the packets its veth hooks see: the
 * "new build" the upgrade fault (test/faults/scenario-upgrade.ts) swaps in
 * under traffic, to show which programs are attached and that they run.
 * Never in the shipped object.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} build_marker SEC(".maps");

static __always_inline void i6pn_mark_build(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&build_marker, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}
#else
static __always_inline void i6pn_mark_build(void)
{
}
#endif

/* XDP on the node's uplink: packets from other nodes, before any skb exists. */
SEC("xdp")
int from_fabric(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct i6pn_config *cfg = i6pn_config();
	struct i6pn_pkt pkt = {};
	int reason;

	if (!cfg)
		return XDP_DROP; /* cannot happen (an array's entry 0); fail closed */
	reason = i6pn_decide_from_fabric(data, data_end, cfg, &pkt);
	return i6pn_verdict(ctx, data, data_end, 0, cfg, I6PN_HOOK_FROM_FABRIC, reason, &pkt, ctx->ingress_ifindex,
			    (__u32)(data_end - data))
		       ? XDP_PASS
		       : XDP_DROP;
}

static __always_inline int i6pn_pull_again(struct __sk_buff *skb, int reason, const struct i6pn_pkt *pkt)
{
	__u32 linear = skb->data_end - skb->data;

	if ((reason != I6PN_DROP_TRUNCATED && !pkt->short_read) || skb->len <= linear || linear >= I6PN_PULL_LEN)
		return 0;
	return bpf_skb_pull_data(skb, skb->len < I6PN_PULL_LEN ? skb->len : I6PN_PULL_LEN) == 0;
}

/*
 * Pass, or deliver locally past the node's stack. A private packet that
 * passed, for an endpoint bound on this node, leaves straight through that
 * endpoint's veth (bpf_redirect_neigh: the neighbour entry gives its MAC),
 * where to_endpoint decides on it as on any other: the same checks, the same
 * counters; the routing lookup, forwarding (no hop-limit decrement, as
 * between two hosts on one link) and netfilter are what it skips. Anything
 * else, or with the fast path off, goes on through the stack.
 */
static __always_inline int i6pn_tc_pass(const struct i6pn_config *cfg, int reason, const struct i6pn_pkt *pkt)
{
	if ((reason == I6PN_PASS_PRIVATE || reason == I6PN_PASS_TUNNEL || reason == I6PN_PASS_TUNNEL_REPLY) &&
	    pkt->deliver_to && (cfg->flags & I6PN_CFG_LOCAL_FAST_PATH))
		return bpf_redirect_neigh(pkt->deliver_to, NULL, 0, 0);
	return TC_ACT_OK;
}

/* The decision of one TC hook. `hook` is a constant at each call: each program keeps only its own. */
static __always_inline int i6pn_tc_decide(struct __sk_buff *skb, const __u32 hook, const struct i6pn_config *cfg,
					  struct i6pn_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	switch (hook) {
	case I6PN_HOOK_FROM_FABRIC:
		return i6pn_decide_from_fabric(data, data_end, cfg, pkt);
	case I6PN_HOOK_FROM_ENDPOINT:
		return i6pn_decide_veth(skb, data, data_end, skb->ifindex, skb->ingress_ifindex, cfg, pkt, 0);
	case I6PN_HOOK_TO_ENDPOINT:
		return i6pn_decide_veth(skb, data, data_end, skb->ifindex, skb->ingress_ifindex, cfg, pkt, 1);
	default:
		return i6pn_decide_to_fabric(data, data_end, skb->ingress_ifindex, pkt);
	}
}

/*
 * Every TC hook: the config (once per packet), the decision, once more after
 * a pull when a read stopped at the linear end (see I6PN_PULL_LEN), the count,
 * the action. What enters the node (from_endpoint, from_fabric) may take the
 * local fast path; what leaves it (to_endpoint, to_fabric) just goes on.
 */
static __always_inline int i6pn_tc(struct __sk_buff *skb, const __u32 hook)
{
	const struct i6pn_config *cfg = i6pn_config();
	struct i6pn_pkt pkt = {};
	int reason;

	if (!cfg)
		return TC_ACT_SHOT; /* cannot happen (an array's entry 0); fail closed */
	reason = i6pn_tc_decide(skb, hook, cfg, &pkt);
	if (i6pn_pull_again(skb, reason, &pkt)) {
		__builtin_memset(&pkt, 0, sizeof(pkt));
		reason = i6pn_tc_decide(skb, hook, cfg, &pkt);
	}
	if (!i6pn_verdict(skb, (void *)(long)skb->data, (void *)(long)skb->data_end, 1, cfg, hook, reason, &pkt,
			  skb->ifindex, skb->len))
		return TC_ACT_SHOT;
	if (hook == I6PN_HOOK_TO_ENDPOINT || hook == I6PN_HOOK_TO_FABRIC)
		return TC_ACT_OK;
	return i6pn_tc_pass(cfg, reason, &pkt);
}

/* TC ingress on an endpoint's host-side veth: what the container sends. */
SEC("tc")
int from_endpoint(struct __sk_buff *skb)
{
	i6pn_mark_build();
	return i6pn_tc(skb, I6PN_HOOK_FROM_ENDPOINT);
}

/* TC egress on the same veth: what reaches the container, from any path. */
SEC("tc")
int to_endpoint(struct __sk_buff *skb)
{
	i6pn_mark_build();
	return i6pn_tc(skb, I6PN_HOOK_TO_ENDPOINT);
}

/*
 * The same from-fabric decision at TC ingress of the uplink, for devices
 * where XDP costs more than it saves: on a veth, any XDP program puts the
 * device on its XDP receive path and turns segmentation offload off
 * (bench/README.md measured 8.3 against 2.2 Gbit/s). Counted as from_fabric.
 */
SEC("tc")
int from_fabric_tc(struct __sk_buff *skb)
{
	return i6pn_tc(skb, I6PN_HOOK_FROM_FABRIC);
}

/* TC egress on the uplink: private packets leave only from their source's own veth. */
SEC("tc")
int to_fabric(struct __sk_buff *skb)
{
	return i6pn_tc(skb, I6PN_HOOK_TO_FABRIC);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
