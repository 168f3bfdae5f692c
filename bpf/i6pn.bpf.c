// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * The three i6pn enforcement points. The policy lives in policy.h; these are
 * only the hooks' entry points: read the context, decide, count, act.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "i6pn.h"
#include "policy.h"

/* Headers a TC program reads must be in the linear part of the skb. */
#define I6PN_PULL_LEN 512

/* XDP on the node's uplink: packets from other nodes, before any skb exists. */
SEC("xdp")
int from_fabric(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct i6pn_pkt pkt = {};
	int reason = i6pn_decide_from_fabric(data, data_end, &pkt);

	return i6pn_verdict(I6PN_HOOK_FROM_FABRIC, reason, &pkt, ctx->ingress_ifindex,
			    (__u32)(data_end - data))
		       ? XDP_PASS
		       : XDP_DROP;
}

static __always_inline void i6pn_pull_headers(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data;

	if (linear < I6PN_PULL_LEN && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < I6PN_PULL_LEN ? skb->len : I6PN_PULL_LEN);
}

/* TC ingress on an endpoint's host-side veth: what the container sends. */
SEC("tc")
int from_endpoint(struct __sk_buff *skb)
{
	struct i6pn_pkt pkt = {};
	int reason;

	i6pn_pull_headers(skb);
	reason = i6pn_decide_veth((void *)(long)skb->data, (void *)(long)skb->data_end,
				  skb->ifindex, &pkt, 0);
	return i6pn_verdict(I6PN_HOOK_FROM_ENDPOINT, reason, &pkt, skb->ifindex, skb->len)
		       ? TC_ACT_OK
		       : TC_ACT_SHOT;
}

/* TC egress on the same veth: what reaches the container, from any path. */
SEC("tc")
int to_endpoint(struct __sk_buff *skb)
{
	struct i6pn_pkt pkt = {};
	int reason;

	i6pn_pull_headers(skb);
	reason = i6pn_decide_veth((void *)(long)skb->data, (void *)(long)skb->data_end,
				  skb->ifindex, &pkt, 1);
	return i6pn_verdict(I6PN_HOOK_TO_ENDPOINT, reason, &pkt, skb->ifindex, skb->len)
		       ? TC_ACT_OK
		       : TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
