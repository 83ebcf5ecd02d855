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

  /**
   * Consistency check of a qcow2 image (raw images have no metadata to check:
   * qemu-img answers 63). Exit 3 means leaked clusters only: wasted space, no
   * damage, so it passes.
   */
  async check(path: string): Promise<'checked' | 'not checkable'> {
    const { format } = await this.info(path);
    if (format !== 'qcow2') return 'not checkable';
    await run('qemu-img', ['check', '-q', '-f', 'qcow2', path], { logger: this.logger, okExitCodes: [0, 3] });
    return 'checked';
  }
}
