import type { Logger } from 'pino';
import { run } from './exec.js';
import { parseQemuImgInfo, type ImageInfo } from './qemuImgInfo.js';

/** Image formats the project writes and reads; others (vmdk extents, …) can name further host files. */
export const IMAGE_FORMATS = ['raw', 'qcow2'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

export function isImageFormat(f: string | undefined): f is ImageFormat {
  return (IMAGE_FORMATS as readonly string[]).includes(f ?? '');
}

/**
 * The image as qemu-img should open it, as a `json:` block-device spec: the
 * protocol pinned to a local file (a name like `nbd://…` is never parsed as
 * a URL), the format given instead of probed (a raw guest disk holding a
 * qcow2 header stays raw), and for checks the backing file not opened
 * (`"backing": null`): a header names whatever its writer wanted.
 */
export function imageSpec(path: string, opts: { format?: ImageFormat; noBacking?: boolean } = {}): string {
  if (opts.format !== undefined && !isImageFormat(opts.format)) throw new Error(`image format ${JSON.stringify(opts.format)} is not one of ${IMAGE_FORMATS.join(', ')}`);
  const spec: Record<string, unknown> = {};
  if (opts.format !== undefined) spec['driver'] = opts.format;
  if (opts.noBacking && opts.format === 'qcow2') spec['backing'] = null;
  spec['file'] = { driver: 'file', filename: path };
  return `json:${JSON.stringify(spec)}`;
}

/** Jobs that read or write whole disks: bounded by their signal, not by a clock. */
const LONG_JOB_MS = 48 * 3600 * 1000;

/**
 * A qcow2 chain as one `json:` spec with every layer pinned (file, format,
 * backing): qemu-img opens exactly these files, whatever their headers say.
 * `layers` runs top first; the last one is opened without backing.
 */
export function chainSpec(layers: readonly string[]): string {
  return `json:${JSON.stringify(chainNode(layers))}`;
}

/** chainSpec's block-device tree as an object (for QMP's blockdev-add / --blockdev). */
export function chainNode(layers: readonly string[]): Record<string, unknown> {
  if (layers.length === 0) throw new Error('chainSpec: no layers');
  let node: Record<string, unknown> | null = null;
  for (const p of [...layers].reverse()) node = { driver: 'qcow2', file: { driver: 'file', filename: p }, backing: node };
  return node!;
}

export class QemuImg {
  constructor(private readonly logger?: Logger) {}

  /**
   * New empty overlay on top of `backing`. The backing format is given
   * explicitly (QEMU ≥ 6.1 refuses to probe it) and the path is absolute.
   */
  async createOverlay(path: string, backing: string, backingFormat: string): Promise<void> {
    if (!backing.startsWith('/')) throw new Error(`backing ${backing} is not an absolute path`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', backing, path], { logger: this.logger, timeoutMs: 120_000 });
  }

  /**
   * New empty qcow2 image of `virtualSize` bytes whose header names `backing`
   * (relative to the image's directory) — written as given, not opened.
   */
  async createOnBacking(path: string, backing: string, virtualSize: number): Promise<void> {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, '-u', path, String(virtualSize)], { logger: this.logger, timeoutMs: 120_000 });
  }

  /**
   * Image facts from the header, without opening the backing file (qemu-img
   * info never does without --backing-chain) nor a qcow2 data file (it opens
   * with no I/O). `format` is the definition's; without it qemu-img probes,
   * which a caller should only do for images the project wrote itself.
   * `shared` reads an image a running QEMU holds locked.
   */
  async info(path: string, opts: { shared?: boolean; format?: ImageFormat } = {}): Promise<ImageInfo> {
    const spec = imageSpec(path, { ...(opts.format ? { format: opts.format } : {}), noBacking: true });
    const r = await run('qemu-img', ['info', '--output=json', ...(opts.shared ? ['-U'] : []), spec], { logger: this.logger, timeoutMs: 60_000 });
    return parseQemuImgInfo(r.stdout);
  }

  /**
   * Rebase in safe mode onto `backing` (relative to the image's directory):
   * qemu-img compares the old and the new backing chains and writes into the
   * image exactly what differs, so the image's content stays what it was.
   * Reads both chains whole; runs as long as that takes (abort by signal).
   */
  async rebaseComparing(path: string, backing: string, backingFormat: ImageFormat, signal?: AbortSignal): Promise<void> {
    await run('qemu-img', ['rebase', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', backing, path], { logger: this.logger, timeoutMs: LONG_JOB_MS, ...(signal ? { signal } : {}) });
  }

  /**
   * Write a qcow2 image's clusters into its backing file and leave the image
   * as it is (-d): whatever reads the image still sees the same content.
   */
  async commitKeepingTop(path: string, signal?: AbortSignal): Promise<void> {
    await run('qemu-img', ['commit', '-q', '-d', '-f', 'qcow2', path], { logger: this.logger, timeoutMs: LONG_JOB_MS, ...(signal ? { signal } : {}) });
  }

  /** Whole-disk copy of what `spec` (an imageSpec/chainSpec) reads, as one image without backing file. */
  async convertFlat(spec: string, dest: string, format: ImageFormat, signal?: AbortSignal): Promise<void> {
    await run('qemu-img', ['convert', '-q', '-O', format, spec, dest], { logger: this.logger, timeoutMs: LONG_JOB_MS, ...(signal ? { signal } : {}) });
  }

  /** Writes the overlay's data into its backing file (offline only; the caller checked the backing is ours). */
  async commit(path: string, format: ImageFormat = 'qcow2'): Promise<void> {
    await run('qemu-img', ['commit', '-q', imageSpec(path, { format })], { logger: this.logger });
  }

  /**
   * Consistency check of a qcow2 image in the format the definition gives
   * (raw images have no metadata to check). The backing file is not opened,
   * and an image with an external data file is refused before the check
   * (which would open it). Exit 3 means leaked clusters only: wasted space,
   * no damage, so it passes.
   */
  async check(path: string, format: ImageFormat): Promise<'checked' | 'not checkable'> {
    const info = await this.info(path, { format });
    if (info.dataFile !== undefined) throw new Error(`${path} names an external data file ${info.dataFile}`);
    if (format !== 'qcow2') return 'not checkable';
    await run('qemu-img', ['check', '-q', imageSpec(path, { format, noBacking: true })], { logger: this.logger, okExitCodes: [0, 3] });
    return 'checked';
  }
}
