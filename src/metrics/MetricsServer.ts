import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { UsageError, errorMessage } from '../domain/errors.js';
import type { BackupMetrics } from './BackupMetrics.js';

export interface ListenAddress {
  host: string;
  port: number;
}

/** STONEY_METRICS_LISTEN: `host:port`, `[v6]:port`; port 0 picks a free one (tests). */
export function parseListenAddress(text: string): ListenAddress {
  const m = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(text.trim());
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (host === undefined || !Number.isInteger(port) || port > 65535) {
    throw new UsageError(`STONEY_METRICS_LISTEN: ${JSON.stringify(text)} is not host:port (e.g. 127.0.0.1:9586)`);
  }
  return { host, port };
}

/** Serves GET /metrics of one daemon; nothing else (404). */
export class MetricsServer {
  private constructor(private readonly server: Server, readonly address: ListenAddress) {}

  static async start(metrics: BackupMetrics, at: ListenAddress, logger: Logger): Promise<MetricsServer> {
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('see /metrics\n');
        return;
      }
      metrics.render().then(
        ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
        (err: unknown) => {
          logger.error({ err: errorMessage(err) }, 'cannot render the metrics');
          res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics failed\n');
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(at.port, at.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const bound = server.address() as AddressInfo;
    logger.info({ host: bound.address, port: bound.port }, 'serving metrics on /metrics');
    return new MetricsServer(server, { host: bound.address, port: bound.port });
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
