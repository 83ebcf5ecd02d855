import type { Logger } from 'pino';
import { run } from './exec.js';
import { parseQemuImgInfo, type ImageInfo } from './qemuImgInfo.js';

export class QemuImg {
  constructor(private readonly logger?: Logger) {}

  /**
   * New empty overlay on top of `backing`. The backing format is given
   * explicitly (QEMU ≥ 6.1 refuses to probe it) and the path is absolute.
   */
  async createOverlay(path: string, backing: string, backingFormat: string): Promise<void> {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', backing, path], { logger: this.logger, timeoutMs: 120_000 });
  }

  /** Image facts; `shared` reads an image a running QEMU holds locked. */
  async info(path: string, opts: { shared?: boolean } = {}): Promise<ImageInfo> {
    const r = await run('qemu-img', ['info', '--output=json', ...(opts.shared ? ['-U'] : []), path], { logger: this.logger, timeoutMs: 60_000 });
    return parseQemuImgInfo(r.stdout);
  }

  /** Writes the overlay's data into its backing file (offline only). */
  async commit(path: string): Promise<void> {
    await run('qemu-img', ['commit', '-q', path], { logger: this.logger });
  }

  async check(path: string): Promise<void> {
    await run('qemu-img', ['check', '-q', path], { logger: this.logger });
  }
}
