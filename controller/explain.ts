/**
 * `i6pnctl explain FROM TO`: whether a packet from one endpoint to another
 * would be delivered, before any is sent. It reads only the store, and
 * answers from the policy model of lib/policy.ts (FleetModel), the one the
 * golden, property and end-to-end tests hold the kernel programs to: each
 * node as its agent holds it once converged, the hooks the packet meets, the
 * first that stops it, and why, in words.
 *
 * FROM is an endpoint (live, or removed: its veth, while its container
 * runs, is sealed); TO is an endpoint or any IPv6 address. Either may be
 * given by address or by name (`<region>.<workspace id>.<endpoint id>`, or
 * `<node>/<ifname>`).
 */
import { isPrivate, parseAddress, regionOf, workspaceOf } from '../lib/address.js';
import { FleetModel, describeStep, firstDrop, type EndFacts, type FleetEndpoint, type PathStep } from '../lib/policy.js';
import { endpointKey } from '../lib/schema.js';
import { StoreError, regionById, workspaceById, type Store } from '../lib/store.js';
import { findEndpointByName, lookupAddress } from './store/endpoints.js';

/** One end as the store says it. */
export interface ExplainedEnd {
  /** What was asked (an address or a name). */
  asked: string;
  address: string;
  /** live: a registered endpoint; removed: it was (its address is never handed out again); unknown: never registered, or outside fdaa::/16. */
  state: 'live' | 'removed' | 'unknown';
  /** The store-wide name, `<region>.<workspace id>.<endpoint id>`. */
  endpoint?: string;
  workspace?: string;
  region?: string;
  node?: string;
  ifname?: string;
  i6pn?: boolean;
  removedAt?: string;
}

export interface ExplainedStep extends PathStep {
  verdict: 'pass' | 'drop';
  why: string;
}

export interface Explanation {
  from: ExplainedEnd;
  to: ExplainedEnd;
  delivered: boolean;
  /** Where enforce mode stops it (absent when delivered). */
  stop?: ExplainedStep;
  /** Why it is delivered, or why it is not. */
  why: string;
  /** Every hook the packet meets, as monitor mode would see it (each decides, a drop is counted and the packet goes on). */
  path: ExplainedStep[];
}

interface Resolved {
  end: ExplainedEnd;
  facts: EndFacts;
  fleet: FleetEndpoint;
}

async function resolve(store: Store, asked: string): Promise<Resolved> {
  let isAddress = true;
  try {
    parseAddress(asked);
  } catch {
    isAddress = false;
  }
  const found = isAddress ? await lookupAddress(store, asked) : await findEndpointByName(store, asked);
  // Exit 2, not 1: explain's 1 means "dropped".
  if (found === null) throw new StoreError('invalid', `no live endpoint is named ${JSON.stringify(asked)}`, 'list endpoints with `i6pnctl endpoint list`, or pass an address');
  const lookup = 'state' in found ? found : ({ state: 'live', record: found } as const);
  if (lookup.state === 'live') {
    const r = lookup.record;
    const addr = parseAddress(r.address);
    return {
      end: { asked, address: r.address, state: 'live', endpoint: endpointKey(r), workspace: r.workspace, region: r.region, node: r.node, ifname: r.ifname, i6pn: r.i6pn },
      facts: { address: addr, workspace: r.workspace, region: r.region, i6pn: r.i6pn, registered: true },
      fleet: { address: addr, i6pn: r.i6pn, node: r.node, live: true },
    };
  }
  const addr = parseAddress(lookup.address);
  const [ws, region] = isPrivate(addr) ? await Promise.all([workspaceById(store, workspaceOf(addr)), regionById(store, regionOf(addr))]) : [null, null];
  const names = { ...(ws ? { workspace: ws.name } : {}), ...(region ? { region: region.name } : {}) };
  if (lookup.state === 'removed') {
    return {
      end: { asked, address: lookup.address, state: 'removed', endpoint: lookup.endpointKey, ...names, ...(lookup.removedAt ? { removedAt: lookup.removedAt } : {}) },
      facts: { address: addr, ...names, registered: true, removedAt: lookup.removedAt },
      // The store keeps neither its node nor its i6pn flag: a sealed veth drops everything whatever they were.
      fleet: { address: addr, i6pn: true, node: null, live: false },
    };
  }
  return {
    end: { asked, address: lookup.address, state: 'unknown', ...names },
    facts: { address: addr, ...names, registered: false },
    fleet: { address: addr, i6pn: false, node: null, live: false },
  };
}

/** Explain FROM → TO from the store. StoreError 'invalid' when FROM cannot send (never registered) or both are one endpoint. */
export async function explain(store: Store, fromAsked: string, toAsked: string): Promise<Explanation> {
  const [from, to] = await Promise.all([resolve(store, fromAsked), resolve(store, toAsked)]);
  if (from.end.state === 'unknown') {
    throw new StoreError(
      'invalid',
      isPrivate(from.facts.address) ? `no endpoint was ever registered with ${from.end.address}` : `${from.end.address} is not an i6pn address (not in fdaa::/16)`,
      'FROM must be an endpoint that i6pnctl registered (live or removed)',
    );
  }
  if (from.end.address === to.end.address) throw new StoreError('invalid', `${from.end.address} is both FROM and TO`, 'a packet to itself never leaves its container; name two endpoints');
  const steps = new FleetModel([from.fleet, to.fleet]).path(from.fleet, to.fleet);
  const path = steps.map((s): ExplainedStep => ({ ...s, verdict: s.reason.startsWith('pass_') ? 'pass' : 'drop', why: describeStep(s, from.facts, to.facts) }));
  const stop = firstDrop(steps);
  const stopped = stop ? path[steps.indexOf(stop)]! : undefined;
  return {
    from: from.end,
    to: to.end,
    delivered: stopped === undefined,
    ...(stopped ? { stop: stopped } : {}),
    why: stopped ? stopped.why : path[path.length - 1]!.why,
    path,
  };
}

/** "fdaa:…:1 (acme, ams-1/ep-a1)": an end as a person reads it. */
export function endLabel(e: ExplainedEnd): string {
  const where = e.node && e.ifname ? `${e.node}/${e.ifname}` : e.state === 'removed' ? `removed${e.removedAt ? ` at ${e.removedAt}` : ''}` : e.state === 'unknown' ? 'not an endpoint' : undefined;
  const what = [e.workspace, where, e.i6pn === false ? 'no i6pn' : undefined].filter((x) => x !== undefined);
  return `${e.address}${what.length ? ` (${what.join(', ')})` : ''}`;
}
