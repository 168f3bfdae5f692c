/**
 * The HTTP endpoints of the agent and the gateway: /metrics (Prometheus
 * text), /healthz (the process answers) and /readyz (every readiness
 * condition true, e.g. maps loaded, uplink attached, initial sync done; 503
 * with what is missing otherwise).
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from './log.js';

/** Named conditions, all of which must hold for /readyz to answer 200. */
export type Readiness = Record<string, boolean>;

/** What /metrics serves (AgentMetrics, GatewayMetrics). */
export interface MetricsSource {
  render(): Promise<{ contentType: string; body: string }>;
}

export function startHttp(opts: {
  host: string;
  port: number;
  metrics: MetricsSource;
  readiness: () => Readiness;
  log: Logger;
}): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    switch (path) {
      case '/metrics':
        opts.metrics
          .render()
          .then(({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body))
          .catch((err: unknown) => {
            opts.log.error({ err }, 'rendering metrics failed');
            res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics failed\n');
          });
        return;
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz': {
        const r = opts.readiness();
        const ready = Object.values(r).every(Boolean);
        res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(`${JSON.stringify({ ready, ...r })}\n`);
        return;
      }
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz, /readyz\n');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`cannot listen on ${opts.host}:${opts.port} (--metrics-addr): ${err.message}`)));
    server.listen(opts.port, opts.host, () => {
      server.removeAllListeners('error');
      server.on('error', (err) => opts.log.error({ err }, 'HTTP server error'));
      resolve(server);
    });
  });
}
