/**
 * The node resolver's answers: one DNS query (bytes) and the address it came
 * from, to the answer's bytes, from the names index (agent/names.ts). The
 * one module that knows the DNS wire format, through the `dns-packet`
 * library (no encoder written here). No sockets: agent/dns-server.ts owns
 * those and forwards what this module says to forward.
 *
 * The querier is the local endpoint whose address is the query's source:
 * the dataplane passes a query to the resolver only from the veth bound to
 * exactly that address (bpf/policy.h, i6pn_resolver_veth), so the source
 * names the container that asked. Its workspace scopes every answer, and
 * the agent holds only its own region: a name of another workspace or
 * region is NXDOMAIN exactly as one that does not exist.
 *
 *   <zone>                            AAAA: the querier's own address
 *   <name>.<zone>                     AAAA: that endpoint
 *   <cluster>.cluster.<zone>          AAAA: every member, by rank; TXT: "rank=R address=A"
 *                                     per member; SRV: priority = rank, target <rank>.<cluster>...
 *   <rank>.<cluster>.cluster.<zone>   AAAA: that member; TXT: "rank=R"
 *   _peers.<zone>                     AAAA: every i6pn endpoint of the workspace but the querier
 *                                     (truncated with TC over UDP; over TCP up to 64 KiB)
 *
 * REFUSED: a source that is no local endpoint, or one without i6pn (the
 * dataplane drops a sealed veth's queries before they get here); a name
 * outside the zone when there is no upstream. SERVFAIL: a name of the zone
 * (other than the apex) while the index is not complete (a full read or the
 * reconcile after a resume under way). TTL: 5 s.
 *
 * Answers are kept, encoded, by source and query bytes (all but the id)
 * while the names index keeps its generation: a query asked again is a copy
 * with its id written in. Any change of the index (a name, a member, a peer
 * of a workspace served here, the queriers) starts a new generation, so a
 * kept answer is never older than the index, which is never older than the
 * maps.
 */
import * as dns from 'dns-packet';
import type { NamesIndex } from './names.js';

export const DNS_TTL = 5;
/** The largest UDP answer sent whatever the client offers (DNS flag day 2020: no fragmentation). */
export const MAX_UDP_ANSWER = 1232;
const MAX_TCP_ANSWER = 65535;
const MAX_RANK_LABEL = /^(0|[1-9][0-9]{0,3})$/;
/** Answers kept at most (all are dropped when it is reached, or when the index changes). */
const MAX_KEPT = 4096;
/** Queries longer than this are not kept (keys stay small). */
const MAX_KEPT_QUERY = 300;

export type Transport = 'udp' | 'tcp';
/** The `type` label of the query metrics: the common types by name, the rest as `other`; `none` when there is no question. */
export const QUERY_TYPES = ['A', 'AAAA', 'TXT', 'SRV', 'SOA', 'NS', 'PTR', 'ANY', 'other', 'none'] as const;
export type QueryType = (typeof QUERY_TYPES)[number];
export const RCODES = ['NOERROR', 'NXDOMAIN', 'REFUSED', 'SERVFAIL', 'FORMERR', 'NOTIMP'] as const;
export type Rcode = (typeof RCODES)[number];
const RCODE_VALUE: Record<Rcode, number> = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };

export type Resolution =
  /** Send `bytes` back. */
  | { kind: 'answer'; bytes: Buffer; type: QueryType; rcode: Rcode; truncated: boolean }
  /** A name outside the zone: ask the upstream resolvers (the query as it came). */
  | { kind: 'forward'; type: QueryType }
  /** Not a query (a response, or no header at all): nothing to send. */
  | { kind: 'drop' };

/** An out-of-zone query's own name and type, to check an upstream's answer against. */
export interface QuestionKey {
  name: string;
  type: string;
}

const KNOWN_TYPES = new Set<string>(QUERY_TYPES);
const typeLabel = (t: string | undefined): QueryType => (t === undefined ? 'none' : KNOWN_TYPES.has(t) ? (t as QueryType) : 'other');

type Question = dns.Question;
type Record_ = dns.Answer;

export interface ResolverOptions {
  /** The zone, lowercase, no trailing dot (i6pn.local). */
  zone: string;
  names: NamesIndex;
  /** Whether names outside the zone are forwarded (else REFUSED). */
  forwarding: boolean;
}

type Answered = Extract<Resolution, { kind: 'answer' }>;

export class Resolver {
  private readonly zone: string;
  private readonly suffix: string;
  private readonly soa: Record_;
  private readonly kept = new Map<string, Answered>();
  private keptGeneration = -1;

  constructor(private readonly o: ResolverOptions) {
    this.zone = o.zone;
    this.suffix = `.${o.zone}`;
    this.soa = {
      name: o.zone,
      type: 'SOA',
      ttl: DNS_TTL,
      data: { mname: o.zone, rname: `hostmaster.${o.zone}`, serial: 1, refresh: 60, retry: 10, expire: 60, minimum: DNS_TTL },
    };
  }

  /** Answer one query from `source` (the canonical text of its address). */
  resolve(query: Buffer, source: string, transport: Transport): Resolution {
    if (query.length < 12 || query.length > MAX_KEPT_QUERY) return this.answer(query, source, transport);
    const generation = this.o.names.generation;
    if (generation !== this.keptGeneration || this.kept.size >= MAX_KEPT) {
      this.kept.clear();
      this.keptGeneration = generation;
    }
    const key = `${transport}${source} ${query.toString('latin1', 2)}`;
    const hit = this.kept.get(key);
    if (hit) {
      const bytes = Buffer.allocUnsafe(hit.bytes.length);
      hit.bytes.copy(bytes);
      bytes[0] = query[0]!;
      bytes[1] = query[1]!;
      return { ...hit, bytes };
    }
    const r = this.answer(query, source, transport);
    if (r.kind === 'answer' && r.rcode !== 'FORMERR') this.kept.set(key, r);
    return r;
  }

  private answer(query: Buffer, source: string, transport: Transport): Resolution {
    let q: dns.DecodedPacket;
    try {
      q = dns.decode(query);
    } catch {
      // Undecodable: FORMERR to a readable query header, nothing to anything else.
      if (query.length < 12 || (query[2]! & 0x80) !== 0) return { kind: 'drop' };
      return this.reply({ id: query.readUInt16BE(0), flags: query.readUInt16BE(2) & dns.RECURSION_DESIRED }, [], 'FORMERR', [], transport, null);
    }
    if (q.type !== 'query') return { kind: 'drop' };
    const question = q.questions?.[0];
    const type = typeLabel(question?.type);
    const opt = (q.additionals ?? []).find((a): a is dns.OptAnswer => a.type === 'OPT') ?? null;
    const head = { id: q.id ?? 0, flags: (q.flags ?? 0) & (dns.RECURSION_DESIRED | dns.CHECKING_DISABLED) };
    const questions = question ? [question] : [];
    if ((((q.flags ?? 0) >> 11) & 0xf) !== 0) return this.reply(head, questions, 'NOTIMP', [], transport, opt, type);
    if (q.questions?.length !== 1 || !question) return this.reply(head, questions, 'FORMERR', [], transport, opt, type);

    const querier = this.o.names.querier(source);
    if (!querier || !querier.i6pn) return this.reply(head, questions, 'REFUSED', [], transport, opt, type);

    const name = question.name.toLowerCase().replace(/\.$/, '');
    const inZone = name === this.zone || name.endsWith(this.suffix);
    if (!inZone) {
      if (this.o.forwarding) return { kind: 'forward', type };
      return this.reply(head, questions, 'REFUSED', [], transport, opt, type);
    }
    head.flags |= dns.AUTHORITATIVE_ANSWER;
    if (name === this.zone) {
      const qt: string = question.type;
      const records = qt === 'AAAA' || qt === 'ANY' ? [this.aaaa(question, querier.address)] : question.type === 'SOA' ? [{ ...this.soa, name: question.name }] : [];
      return this.reply(head, questions, 'NOERROR', records, transport, opt, type);
    }
    if (!this.o.names.complete) return this.reply(head, questions, 'SERVFAIL', [], transport, opt, type);
    const labels = name.slice(0, -this.suffix.length).split('.');
    const found = this.lookup(labels, question, querier.workspace, querier.address);
    if (found === null) return this.reply(head, questions, 'NXDOMAIN', [this.soa], transport, opt, type, true);
    return this.reply(head, questions, 'NOERROR', found, transport, opt, type);
  }

  /**
   * The records of a name below the zone (`labels` before it), for the
   * question's type: [] is NODATA (the name exists, not with that type),
   * null NXDOMAIN.
   */
  private lookup(labels: string[], question: Question, workspace: number, self: string): Record_[] | null {
    // dns-packet decodes type 255 as ANY, which its types leave out.
    const t: string = question.type;
    const wants = (type: string): boolean => t === type || t === 'ANY';
    if (labels.length === 1) {
      const label = labels[0]!;
      if (label === '_peers') return wants('AAAA') ? this.o.names.peers(workspace).filter((a) => a !== self).map((a) => this.aaaa(question, a)) : [];
      const address = this.o.names.endpoint(workspace, label);
      if (address !== null) return wants('AAAA') ? [this.aaaa(question, address)] : [];
      // The clusters' parent exists for every workspace alike (answering it reveals nothing).
      return label === 'cluster' ? [] : null;
    }
    if (labels.length === 2 && labels[1] === 'cluster') {
      const members = this.o.names.cluster(workspace, labels[0]!);
      if (members.length === 0) return null;
      const out: Record_[] = [];
      if (wants('AAAA')) for (const m of members) out.push(this.aaaa(question, m.address));
      if (wants('TXT')) for (const m of members) out.push({ name: question.name, type: 'TXT', ttl: DNS_TTL, data: `rank=${m.rank} address=${m.address}` });
      if (wants('SRV')) {
        for (const m of members) {
          out.push({ name: question.name, type: 'SRV', ttl: DNS_TTL, data: { priority: m.rank, weight: 0, port: 0, target: `${m.rank}.${question.name.replace(/\.$/, '')}` } });
        }
      }
      return out;
    }
    if (labels.length === 3 && labels[2] === 'cluster' && MAX_RANK_LABEL.test(labels[0]!)) {
      const rank = Number(labels[0]);
      const members = this.o.names.cluster(workspace, labels[1]!).filter((m) => m.rank === rank);
      if (members.length === 0) return null;
      const out: Record_[] = [];
      if (wants('AAAA')) for (const m of members) out.push(this.aaaa(question, m.address));
      if (wants('TXT')) out.push({ name: question.name, type: 'TXT', ttl: DNS_TTL, data: `rank=${rank}` });
      return out;
    }
    return null;
  }

  private aaaa(question: Question, address: string): Record_ {
    return { name: question.name, type: 'AAAA', ttl: DNS_TTL, data: address };
  }

  /**
   * The answer, encoded, cut to what the transport takes: UDP the client's
   * EDNS size (512 without EDNS, at most MAX_UDP_ANSWER), TCP 64 KiB. A cut
   * answer keeps the records that fit and says TC.
   */
  private reply(
    head: { id: number; flags: number },
    questions: Question[],
    rcode: Rcode,
    answers: Record_[],
    transport: Transport,
    opt: dns.OptAnswer | null,
    type: QueryType = 'none',
    soaInAuthority = false,
  ): Resolution {
    const authorities = soaInAuthority || (rcode === 'NOERROR' && answers.length === 0 && questions.length > 0) ? [this.soa] : [];
    const additionals: Record_[] = opt ? [{ name: '.', type: 'OPT', udpPayloadSize: MAX_UDP_ANSWER, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }] : [];
    if (this.o.forwarding) head.flags |= dns.RECURSION_AVAILABLE;
    const packet: dns.Packet = { type: 'response', id: head.id, flags: head.flags | RCODE_VALUE[rcode], questions, answers, authorities, additionals };
    const limit = transport === 'tcp' ? MAX_TCP_ANSWER : opt ? Math.max(512, Math.min(opt.udpPayloadSize, MAX_UDP_ANSWER)) : 512;
    let truncated = false;
    let length = dns.encodingLength(packet);
    if (length > limit) {
      truncated = true;
      packet.flags! |= dns.TRUNCATED_RESPONSE;
      packet.authorities = [];
      length = dns.encodingLength(packet);
      const kept: Record_[] = [];
      let size = length - answerBytes(answers);
      for (const a of answers) {
        const n = answerBytes([a]);
        if (size + n > limit) break;
        size += n;
        kept.push(a);
      }
      packet.answers = kept;
    }
    return { kind: 'answer', bytes: dns.encode(packet), type, rcode, truncated };
  }

  /** SERVFAIL for a query that could not be forwarded (no upstream answered); null for one that cannot be read. */
  failure(query: Buffer, transport: Transport): Buffer | null {
    let q: dns.DecodedPacket;
    try {
      q = dns.decode(query);
    } catch {
      return null;
    }
    const opt = (q.additionals ?? []).find((a): a is dns.OptAnswer => a.type === 'OPT') ?? null;
    const r = this.reply({ id: q.id ?? 0, flags: (q.flags ?? 0) & dns.RECURSION_DESIRED }, (q.questions ?? []).slice(0, 1), 'SERVFAIL', [], transport, opt);
    return r.kind === 'answer' ? r.bytes : null;
  }

  /** The question of a query, to check an upstream's answer against (null: none). */
  static questionOf(packet: Buffer): QuestionKey | null {
    try {
      const q = dns.decode(packet).questions?.[0];
      return q ? { name: q.name.toLowerCase(), type: q.type } : null;
    } catch {
      return null;
    }
  }
}

/** Bytes the records take in a message (dns-packet does not compress names, so sizes add up). */
function answerBytes(records: Record_[]): number {
  return dns.encodingLength({ answers: records }) - 12;
}

/** The rcode in an answer's header (the upstream's), as a label. */
export function rcodeOf(answer: Buffer): Rcode | null {
  if (answer.length < 12) return null;
  const v = answer[3]! & 0xf;
  return (Object.entries(RCODE_VALUE).find(([, n]) => n === v)?.[0] as Rcode | undefined) ?? null;
}
