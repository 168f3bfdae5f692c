/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The maps shared by the programs. The agent pins them under its bpffs
 * directory and resizes `endpoints` (--max-endpoints) before load.
 */
#ifndef I6PN_MAPS_H
#define I6PN_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "i6pn.h"

/* Live members of this node's region: the truth behind every pass. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_addr);
	__type(value, struct i6pn_endpoint);
	__uint(max_entries, 65536);
} endpoints SEC(".maps");

/* The host-side veths of this node's endpoints. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct i6pn_local_iface);
	__uint(max_entries, 4096);
} local_ifaces SEC(".maps");

/* The tunneled (endpoint, protocol, port) of this node's region (see struct i6pn_tunnel_key). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct i6pn_tunnel_key);
	__type(value, struct i6pn_tunnel);
	__uint(max_entries, 16384);
} tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct i6pn_config);
	__uint(max_entries, 1);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct i6pn_counter);
	__uint(max_entries, I6PN_COUNTERS_MAX);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} drop_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct i6pn_event_budget);
	__uint(max_entries, 1);
} event_budget SEC(".maps");

/* Drop events not written: past the budget, or no room in the ring buffer (struct i6pn_event_stats). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct i6pn_event_stats);
	__uint(max_entries, 1);
} event_stats SEC(".maps");

/* Where the agent's membership stands (see struct i6pn_sync_state); no program reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct i6pn_sync_state);
	__uint(max_entries, 1);
} sync_state SEC(".maps");

/*
 * BTF carrier for the ABI (see struct i6pn_abi); never read or written, and
 * never created in the kernel: the agent turns its autocreate off before
 * load (agent/bpf/dataplane.ts). Only its type in the object's BTF matters.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct i6pn_abi);
	__uint(max_entries, 1);
} i6pn_abi SEC(".maps");

#endif /* I6PN_MAPS_H */
