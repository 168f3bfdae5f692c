/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * Packet parsing for i6pn: Ethernet, up to I6PN_MAX_VLAN_TAGS VLAN tags, the
 * fixed IPv6 header, and (only for private traffic) the extension header
 * chain. Every read is bounds-checked against data_end; helpers take and
 * return offsets, never pointers into the packet.
 */
#ifndef I6PN_PARSE_H
#define I6PN_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "i6pn.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* Extension headers that are not on the allow-list (RFC 8200, IANA). */
#define I6PN_NEXTHDR_MOBILITY 135
#define I6PN_NEXTHDR_HIP 139
#define I6PN_NEXTHDR_SHIM6 140
#define I6PN_NEXTHDR_EXP1 253
#define I6PN_NEXTHDR_EXP2 254

/* Headers past this offset are not walked: such a private packet is dropped. */
#define I6PN_MAX_HDR_OFFSET 4096

/* What the fixed headers said: everything a decision needs, copied out. */
struct i6pn_pkt {
	struct in6_addr src;
	struct in6_addr dst;
	__u32 l4_off;  /* offset of the header after the fixed IPv6 header */
	__u8 nexthdr;  /* next header of the fixed IPv6 header */
	__u8 hop_limit;
	__u8 upper;    /* upper-layer protocol after the walked chain (i6pn_walk_ext_hdrs) */
	__u32 upper_off; /* its offset; upper is IPPROTO_FRAGMENT for a later fragment */
	__u8 short_read; /* a read stopped at data_end without a verdict of truncated */
	__u32 deliver_to; /* a passed private packet's destination veth, when bound on this node, else 0 */
};

/*
 * What a step of a decision returns besides an enum i6pn_reason (a verdict):
 * no verdict yet, go on. The convention is in the header of policy.h.
 */
#define I6PN_CONTINUE I6PN_REASON_MAX

static __always_inline int i6pn_is_vlan(__u16 proto_be)
{
	return proto_be == bpf_htons(ETH_P_8021Q) || proto_be == bpf_htons(ETH_P_8021AD);
}

/*
 * Parse Ethernet, VLAN tags and the fixed IPv6 header. Returns
 * I6PN_CONTINUE for an IPv6 packet (pkt filled), I6PN_PASS_NOT_PRIVATE for
 * anything else (IPv4, ARP, ...: not ours, pkt untouched), or the reason to
 * drop with.
 */
static __always_inline int i6pn_parse_l3(void *data, void *data_end, struct i6pn_pkt *pkt)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u16 proto;

	/* A frame too short for its Ethernet header may hide anything. */
	if ((void *)(eth + 1) > data_end)
		return I6PN_DROP_TRUNCATED;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < I6PN_MAX_VLAN_TAGS; i++) {
		struct vlan_hdr {
			__be16 tci;
			__be16 proto;
		} *vh = data + off;

		if (!i6pn_is_vlan(proto))
			break;
		if ((void *)(vh + 1) > data_end)
			return I6PN_DROP_TRUNCATED;
		proto = vh->proto;
		off += sizeof(*vh);
	}
	/*
	 * Attack: a third tag the parser would not look behind, wrapping a
	 * private packet. We cannot prove it is not ours, so it is dropped.
	 */
	if (i6pn_is_vlan(proto))
		return I6PN_DROP_VLAN_DEPTH;
	if (proto != bpf_htons(ETH_P_IPV6))
		return I6PN_PASS_NOT_PRIVATE;

	struct ipv6hdr *ip6 = data + off;

	if ((void *)(ip6 + 1) > data_end)
		return I6PN_DROP_TRUNCATED;
	if (ip6->version != 6)
		return I6PN_DROP_MALFORMED;
	__builtin_memcpy(&pkt->src, &ip6->saddr, sizeof(pkt->src));
	__builtin_memcpy(&pkt->dst, &ip6->daddr, sizeof(pkt->dst));
	pkt->nexthdr = ip6->nexthdr;
	pkt->hop_limit = ip6->hop_limit;
	pkt->l4_off = off + sizeof(*ip6);
	return I6PN_CONTINUE;
}

/*
 * The one table of IPv6 extension headers (RFC 8200 and IANA's "IPv6
 * Extension Header Types"), and what the chain walk does with each: walk it
 * (options, AH, fragment), or drop the packet (routing, and the headers we do
 * not understand). Anything else ends the chain: an upper layer (TCP, UDP,
 * ICMPv6, ESP, no next header, ...).
 */
enum i6pn_ext_kind {
	I6PN_EXT_NONE = 0,     /* not an extension header: the upper layer */
	I6PN_EXT_OPTIONS = 1,  /* hop-by-hop, destination options: length in 8 octets, minus one */
	I6PN_EXT_AH = 2,       /* authentication header: length in 4 octets, minus two */
	I6PN_EXT_FRAGMENT = 3, /* fixed 8 bytes */
	I6PN_EXT_ROUTING = 4,  /* denied: see i6pn_walk_ext_hdrs */
	I6PN_EXT_DENIED = 5,   /* mobility, HIP, shim6, experimental: not on the allow-list */
};

static __always_inline enum i6pn_ext_kind i6pn_ext_hdr(__u8 nh)
{
	switch (nh) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_DSTOPTS:
		return I6PN_EXT_OPTIONS;
	case IPPROTO_AH:
		return I6PN_EXT_AH;
	case IPPROTO_FRAGMENT:
		return I6PN_EXT_FRAGMENT;
	case IPPROTO_ROUTING:
		return I6PN_EXT_ROUTING;
	case I6PN_NEXTHDR_MOBILITY:
	case I6PN_NEXTHDR_HIP:
	case I6PN_NEXTHDR_SHIM6:
	case I6PN_NEXTHDR_EXP1:
	case I6PN_NEXTHDR_EXP2:
		return I6PN_EXT_DENIED;
	}
	return I6PN_EXT_NONE;
}

static __always_inline int i6pn_is_ext_hdr(__u8 nh)
{
	return i6pn_ext_hdr(nh) != I6PN_EXT_NONE;
}

/*
 * Walk the extension header chain of a private packet from the allow-list
 * (hop-by-hop, destination options, fragment, AH), at most I6PN_MAX_EXT_HDRS
 * headers. Returns I6PN_CONTINUE when the chain ends in an upper-layer
 * header (or a non-first fragment), with pkt->upper and pkt->upper_off set,
 * else the reason to drop with.
 */
static __always_inline int i6pn_walk_ext_hdrs(void *data, void *data_end, struct i6pn_pkt *pkt)
{
	__u32 off = pkt->l4_off;
	__u8 nh = pkt->nexthdr;

#pragma unroll
	for (int i = 0; i < I6PN_MAX_EXT_HDRS; i++) {
		__u8 *h;
		__u32 len;

		const enum i6pn_ext_kind kind = i6pn_ext_hdr(nh);

		switch (kind) {
		case I6PN_EXT_OPTIONS:
		case I6PN_EXT_AH:
			if (off > I6PN_MAX_HDR_OFFSET)
				return I6PN_DROP_EXT_HDR_LIMIT;
			h = data + off;
			if ((void *)(h + 2) > data_end)
				return I6PN_DROP_TRUNCATED;
			len = kind == I6PN_EXT_AH ? ((__u32)h[1] + 2) * 4 : ((__u32)h[1] + 1) * 8;
			nh = h[0];
			off += len;
			/* The whole header must be there, not just its first bytes. */
			if (data + off > data_end)
				return I6PN_DROP_TRUNCATED;
			break;
		case I6PN_EXT_FRAGMENT:
			if (off > I6PN_MAX_HDR_OFFSET)
				return I6PN_DROP_EXT_HDR_LIMIT;
			h = data + off;
			if ((void *)(h + 8) > data_end)
				return I6PN_DROP_TRUNCATED;
			/*
			 * A later fragment carries no headers to walk; it is judged,
			 * like the first, by the fixed header's addresses.
			 */
			if ((((__u16)h[2] << 8 | h[3]) & 0xfff8) != 0) {
				pkt->upper = IPPROTO_FRAGMENT;
				pkt->upper_off = off;
				return I6PN_CONTINUE;
			}
			nh = h[0];
			off += 8;
			break;
		case I6PN_EXT_ROUTING:
			/*
			 * Attack: a routing header's segments would steer the packet,
			 * after our check of the fixed header's destination, into
			 * another workspace or region.
			 */
			return I6PN_DROP_ROUTING_HEADER;
		case I6PN_EXT_DENIED:
			/* Headers we do not understand could change where it goes. */
			return I6PN_DROP_EXT_HDR_DENIED;
		case I6PN_EXT_NONE:
			/* upper layer (TCP, UDP, ICMPv6, ESP, no next header, ...) */
			pkt->upper = nh;
			pkt->upper_off = off;
			return I6PN_CONTINUE;
		}
	}
	/* Attack: a chain longer than we walk could hide a routing header. */
	if (i6pn_is_ext_hdr(nh))
		return I6PN_DROP_EXT_HDR_LIMIT;
	pkt->upper = nh;
	pkt->upper_off = off;
	return I6PN_CONTINUE;
}

#endif /* I6PN_PARSE_H */
