/**
 * `i6pnctl observe`: the agents' drop events, one line each. Live events come
 * from a core NATS subscription to the nodes' subjects; recent ones
 * (`--since`, `--last`) from the I6PN_EVENTS stream, through an ordered
 * consumer that goes on delivering new ones with `--follow`, so the history
 * and what follows it leave no gap and repeat nothing.
 *
 * Each event is validated where it enters (lib/events.ts) and completed with
 * the store's names of the workspaces and regions its addresses carry (the
 * agents publish ids). An event that breaks the schema is reported on
 * stderr and skipped.
 */
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import { regionIdHex, workspaceIdHex } from '../lib/address.js';
import { EVENTS_STREAM, decodeDropEvent, eventsFilter, type DropEventRecord, type EventEnd } from '../lib/events.js';
import { regionById, workspaceById, type Store } from '../lib/store.js';

/** What to show; every field given must match (a list: any of its values). */
export interface EventFilter {
  /** Events reported by the nodes of this region (the subject's region). */
  region?: string;
  /** Events reported by this node. */
  node?: string;
  /** Either end in this workspace (by its id, from the address bits). */
  workspaceId?: number;
  reasons?: ReadonlySet<string>;
  hooks?: ReadonlySet<string>;
  /** The source address, canonical. */
  from?: string;
  /** The destination address, canonical. */
  to?: string;
}

export function matches(e: DropEventRecord, f: EventFilter): boolean {
  if (f.region !== undefined && e.region !== f.region) return false;
  if (f.node !== undefined && e.node !== f.node) return false;
  if (f.reasons && !f.reasons.has(e.reason)) return false;
  if (f.hooks && !f.hooks.has(e.hook)) return false;
  if (f.from !== undefined && e.src?.address !== f.from) return false;
  if (f.to !== undefined && e.dst?.address !== f.to) return false;
  if (f.workspaceId !== undefined && e.src?.workspaceId !== f.workspaceId && e.dst?.workspaceId !== f.workspaceId) return false;
  return true;
}

/** Workspace and region names by id, from the store, each looked up once. */
export class StoreNames {
  private readonly workspaces = new Map<number, Promise<string | undefined>>();
  private readonly regions = new Map<number, Promise<string | undefined>>();

  constructor(private readonly store: Store) {}

  private lookup<T extends { name: string }>(cache: Map<number, Promise<string | undefined>>, id: number, get: (s: Store, id: number) => Promise<T | null>): Promise<string | undefined> {
    let p = cache.get(id);
    if (!p) {
      // A name the store cannot give (an entry broken by hand, a lost connection) is left out, not fatal.
      p = get(this.store, id).then((r) => r?.name, () => undefined);
      cache.set(id, p);
    }
    return p;
  }

  /** The event with `workspace` and `region` names on each private end. */
  async complete(e: DropEventRecord): Promise<DropEventRecord> {
    const end = async (x: EventEnd | null): Promise<EventEnd | null> => {
      if (!x || x.workspaceId === undefined || x.regionId === undefined) return x;
      const [workspace, region] = await Promise.all([this.lookup(this.workspaces, x.workspaceId, workspaceById), this.lookup(this.regions, x.regionId, regionById)]);
      return { ...x, ...(workspace !== undefined ? { workspace } : {}), ...(region !== undefined ? { region } : {}) };
    };
    const [src, dst] = await Promise.all([end(e.src), end(e.dst)]);
    return { ...e, src, dst };
  }
}

export interface ObserveOptions {
  filter: EventFilter;
  /** Stream history from this time. */
  since?: Date;
  /** Only the last N matching events of the history. */
  last?: number;
  /** After the history, go on with live events. */
  follow: boolean;
  /** Ends the observation (Ctrl-C). */
  signal: AbortSignal;
  onEvent: (e: DropEventRecord) => void;
  /** A message that is not a valid event. */
  onInvalid: (subject: string, problem: string) => void;
}

/** How long a history read waits for a first message before it takes the stream as holding none that match. */
const HISTORY_IDLE_MS = 1500;

/**
 * Observe until the history is shown (without `follow`) or `signal` aborts.
 * Resolves with the number of events shown.
 */
export async function observe(store: Store, o: ObserveOptions): Promise<number> {
  const names = new StoreNames(store);
  const subject = eventsFilter({ region: o.filter.region, node: o.filter.node });
  let shown = 0;
  const take = async (subj: string, data: Uint8Array): Promise<DropEventRecord | null> => {
    const d = decodeDropEvent(data);
    if (!d.ok) {
      o.onInvalid(subj, `${d.reason}: ${d.message}`);
      return null;
    }
    return matches(d.record, o.filter) ? names.complete(d.record) : null;
  };
  const show = (e: DropEventRecord): void => {
    shown++;
    o.onEvent(e);
  };

  if (o.since === undefined && o.last === undefined) {
    const sub = store.nc.subscribe(subject);
    const stop = (): void => sub.unsubscribe();
    o.signal.addEventListener('abort', stop, { once: true });
    if (o.signal.aborted) stop();
    for await (const m of sub) {
      const e = await take(m.subject, m.data);
      if (e) show(e);
    }
    return shown;
  }

  const consumer = await jetstream(store.nc).consumers.get(EVENTS_STREAM, {
    filter_subjects: subject,
    ...(o.since ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: o.since.toISOString() } : { deliver_policy: DeliverPolicy.All }),
  });
  const messages = await consumer.consume();
  const stop = (): void => void messages.stop();
  o.signal.addEventListener('abort', stop, { once: true });
  if (o.signal.aborted) stop();
  // The history: held until it is read through (for --last), then shown.
  let history: DropEventRecord[] | null = [];
  const endHistory = (): boolean => {
    clearTimeout(idle);
    if (history === null) return o.follow;
    const h = history;
    history = null;
    for (const e of o.last !== undefined ? h.slice(-o.last) : h) show(e);
    if (!o.follow) stop();
    return o.follow;
  };
  let idle = setTimeout(endHistory, HISTORY_IDLE_MS);
  for await (const m of messages) {
    const e = await take(m.subject, m.data);
    if (history !== null) {
      if (e) history.push(e);
      clearTimeout(idle);
      if (m.info.pending === 0) {
        if (!endHistory()) break;
      } else {
        idle = setTimeout(endHistory, HISTORY_IDLE_MS);
      }
    } else if (e) {
      show(e);
    }
  }
  clearTimeout(idle);
  if (history !== null) endHistory();
  return shown;
}

// ---------------------------------------------------------------- one line per event

function endText(x: EventEnd | null, port: number | undefined): string {
  if (!x) return '-';
  const at = port === undefined ? x.address : `[${x.address}]:${port}`;
  const ws = x.workspace ?? (x.workspaceId !== undefined ? `ws ${workspaceIdHex(x.workspaceId)}` : undefined);
  const region = x.region ?? (x.regionId !== undefined ? `region ${regionIdHex(x.regionId)}` : undefined);
  const what = [ws, region, x.ifname, x.endpoint === undefined && x.workspaceId !== undefined ? 'not a member here' : undefined].filter((s) => s !== undefined);
  return what.length ? `${at} (${what.join(' ')})` : at;
}

/**
 * "2026-12-02T12:03:04.123456Z ams-1 from_endpoint drop cross_workspace
 * udp [fdaa:…]:40001 (acme ams ep-a1) → [fdaa:…]:7001 (globex ams) len 62"
 */
export function eventLine(e: DropEventRecord): string {
  const icmp = e.icmpType !== undefined ? ` type ${e.icmpType} code ${e.icmpCode ?? 0}` : '';
  return `${e.time} ${e.node} ${e.hook} ${e.verdict} ${e.reason} ${e.proto ?? 'not-ipv6'}${icmp} ${endText(e.src, e.sport)} → ${endText(e.dst, e.dport)} len ${e.len}`;
}
