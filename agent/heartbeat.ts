/**
 * The node's registration in the nodes bucket: its region and version, and a
 * heartbeat (heartbeatAt) rewritten every few seconds, so the controller and
 * the alerts can tell a live agent from a gone one.
 */
import { nodeRecord, SCHEMA_VERSION, type NodeRecord } from '../lib/schema.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './metrics.js';

export interface HeartbeatOptions {
  node: string;
  region: string;
  version: string;
  intervalMs: number;
  put: (record: NodeRecord) => Promise<void>;
  metrics: AgentMetrics;
  log: Logger;
}

export class Heartbeat {
  private timer: NodeJS.Timeout | null = null;
  private readonly startedAt = new Date().toISOString();
  private failing = false;
  private inFlight = false;

  constructor(private readonly o: HeartbeatOptions) {}

  start(): void {
    void this.beat();
    this.timer = setInterval(() => void this.beat(), this.o.intervalMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private async beat(): Promise<void> {
    if (this.inFlight) return;
    this.inFlight = true;
    const record = nodeRecord.parse({
      v: SCHEMA_VERSION,
      name: this.o.node,
      region: this.o.region,
      version: this.o.version,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
    });
    try {
      await this.o.put(record);
      this.o.metrics.heartbeatLastSuccess.set(Date.now() / 1000);
      if (this.failing) this.o.log.info('heartbeat written again');
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.o.log.warn({ err }, 'writing the node heartbeat failed; retrying');
      this.failing = true;
    } finally {
      this.inFlight = false;
    }
  }
}
