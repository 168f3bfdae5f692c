// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Bench traffic generator: run through BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES, every frame is sent out of the interface in
 * `target` (one veth of a pair, in the generator's namespace), so its peer
 * receives a flood at the rate XDP can produce, not the rate of a user-space
 * packet generator. Not product code: compiled into build/bench/.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} target SEC(".maps");

SEC("xdp")
int xdp_redirect_target(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&target, &zero);

	return ifindex ? bpf_redirect(*ifindex, 0) : XDP_ABORTED;
}

/* The sink's baseline: lets veth accept redirected frames and hands them to the stack. */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* The drop baseline: the least any XDP filter can do with a packet (veth counts it in xdp_drops). */
SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
