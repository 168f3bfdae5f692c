/**
 * Drop events on NATS: the subjects the agents publish them on, the stream
 * that keeps the recent ones, and the JSON of one event, which the agents
 * write and `i6pnctl observe` reads (validated with this schema where it
 * enters).
 *
 *   i6pn.events.<region>.<node>   one subject per node (core NATS); an agent's
 *                                 credentials may publish on its own only
 *   I6PN_EVENTS                   a stream over i6pn.events.>, bounded by age
 *                                 and size, for `observe --since / --last`
 *
 * An event is what the kernel wrote (hook, verdict, reason, addresses,
 * protocol, ports or ICMPv6 type, length) and what the reporting agent's
 * membership says of each address (the workspace id from its bits; for a
 * live member of the agent's region its store name, i6pn flag and, on the
 * agent's own node, its veth). Names of workspaces and regions are the
 * store's, added by i6pnctl, which reads it; the agents do not.
 */
import { z } from 'zod';
import { HOOK_NAMES, REASON_NAMES } from '../agent/bpf/abi.generated.js';
import { decodeRecord, ifnameSchema, isValidName, isValidNodeName, nameSchema, nodeNameSchema, type Decoded } from './schema.js';

export const EVENTS_SUBJECT_PREFIX = 'i6pn.events';

/** The subject node `node` of `region` publishes its drop events on. */
export function eventsSubject(region: string, node: string): string {
  if (!isValidName(region)) throw new Error(`invalid region name ${JSON.stringify(region)}`);
  if (!isValidNodeName(node)) throw new Error(`invalid node name ${JSON.stringify(node)}`);
  return `${EVENTS_SUBJECT_PREFIX}.${region}.${node}`;
}

/**
 * The subject filter of the events of one region, one node, both or all. A
 * node name may hold dots (DNS labels), so a region's nodes are `>`.
 */
export function eventsFilter(sel: { region?: string | undefined; node?: string | undefined }): string {
  if (sel.region !== undefined && !isValidName(sel.region)) throw new Error(`invalid region name ${JSON.stringify(sel.region)}`);
  if (sel.node !== undefined && !isValidNodeName(sel.node)) throw new Error(`invalid node name ${JSON.stringify(sel.node)}`);
  return `${EVENTS_SUBJECT_PREFIX}.${sel.region ?? '*'}.${sel.node ?? '>'}`;
}

/** The stream that keeps recent events (it captures the agents' core publishes). */
export const EVENTS_STREAM = 'I6PN_EVENTS';
/** How much it keeps: an hour, at most 64 MiB (about 150,000 events); the oldest go first. */
export const EVENTS_STREAM_MAX_AGE_MS = 60 * 60 * 1000;
export const EVENTS_STREAM_MAX_BYTES = 64 * 1024 * 1024;
/** An event is ~0.5 KB; the stream refuses anything larger than this. */
export const EVENT_MAX_BYTES = 4096;

/** Protocol numbers an event names (IANA); any other is printed as its number. */
const PROTOCOLS: Record<number, string> = {
  0: 'hopopts',
  6: 'tcp',
  17: 'udp',
  43: 'routing',
  44: 'fragment',
  50: 'esp',
  51: 'ah',
  58: 'icmpv6',
  59: 'nonxt',
  60: 'dstopts',
};

export function protocolName(n: number): string {
  return PROTOCOLS[n] ?? String(n);
}

const u32 = z.number().int().min(0).max(0xffff_ffff);
const u16 = z.number().int().min(0).max(0xffff);
const u8 = z.number().int().min(0).max(0xff);

/** One address of an event, and what the reporting agent (and i6pnctl) know of it. */
export const eventEnd = z.object({
  /** Canonical (RFC 5952). */
  address: z.string(),
  /** Bits 16..47 of a private (fdaa::/16) address. */
  workspaceId: u32.optional(),
  /** Bits 48..63 of a private address. */
  regionId: u16.optional(),
  /** `<region>.<workspace id>.<endpoint id>` when a live member of the agent's region. */
  endpoint: z.string().optional(),
  /** A live member's i6pn flag. */
  i6pn: z.boolean().optional(),
  /** Served by the reporting node. */
  local: z.boolean().optional(),
  /** A local member's host-side veth. */
  ifname: ifnameSchema.optional(),
  /** Names from the store, added by i6pnctl. */
  workspace: nameSchema.optional(),
  region: nameSchema.optional(),
});
export type EventEnd = z.infer<typeof eventEnd>;

export const dropEventRecord = z.object({
  v: z.literal(1),
  /** When the kernel dropped it (its monotonic clock, in the agent's wall time), to the microsecond. */
  time: z.iso.datetime(),
  node: nodeNameSchema,
  region: nameSchema,
  hook: z.enum(HOOK_NAMES),
  verdict: z.enum(['drop', 'would_drop']),
  reason: z.enum(REASON_NAMES),
  /** Monitor mode: the packet went on, counted as would_drop. */
  wouldDrop: z.boolean(),
  /** The fixed IPv6 header's addresses; null for a frame that is not IPv6. */
  src: eventEnd.nullable(),
  dst: eventEnd.nullable(),
  /** Upper-layer protocol (protocolName()), or the first extension header's when the chain was not walked; null: not IPv6. */
  proto: z.string().nullable(),
  sport: u16.optional(),
  dport: u16.optional(),
  icmpType: u8.optional(),
  icmpCode: u8.optional(),
  /** Frame length in bytes. */
  len: u32,
  /** The interface the hook runs on. */
  ifindex: u32,
});
export type DropEventRecord = z.infer<typeof dropEventRecord>;

/** An event's bytes (or JSON text) validated; an invalid one says why. */
export function decodeDropEvent(value: Uint8Array | string): Decoded<DropEventRecord> {
  return decodeRecord(dropEventRecord, value);
}
