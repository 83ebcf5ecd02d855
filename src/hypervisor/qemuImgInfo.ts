/** The parts of `qemu-img info --output=json` we rely on. */
export interface ImageInfo {
  format: string;
  virtualSize: number;
  actualSize: number | undefined;
  /** absolute backing path as qemu resolves it, or undefined */
  backingFile: string | undefined;
  backingFormat: string | undefined;
  /** the backing file name exactly as the header stores it (may be relative) */
  backingName?: string | undefined;
  /** a qcow2 image's external data file (another host file its data lives in), or undefined */
  dataFile?: string | undefined;
  /** a qcow2 image's persistent dirty bitmaps (absent when it has none) */
  bitmaps?: ImageBitmap[];
}

/**
 * A persistent dirty bitmap stored in a qcow2 image. Flags as qemu-img
 * prints them: `auto` = recording whenever the image is written, `in-use` =
 * the image was not closed cleanly since (the bitmap cannot be trusted).
 */
export interface ImageBitmap {
  name: string;
  flags: string[];
  granularity: number;
}

export function parseQemuImgInfo(json: string): ImageInfo {
  const o = JSON.parse(json) as Record<string, unknown>;
  const str = (k: string) => (typeof o[k] === 'string' ? (o[k] as string) : undefined);
  const num = (k: string) => (typeof o[k] === 'number' ? (o[k] as number) : undefined);
  const format = str('format');
  const virtualSize = num('virtual-size');
  if (format === undefined || virtualSize === undefined) throw new Error('qemu-img info: unexpected output');
  const specific = o['format-specific'] as { data?: Record<string, unknown> } | undefined;
  const df = specific?.data?.['data-file'];
  const dataFile = typeof df === 'string' ? df : undefined;
  const bitmaps = parseBitmaps(specific?.data?.['bitmaps']);
  return {
    format,
    virtualSize,
    actualSize: num('actual-size'),
    backingFile: str('full-backing-filename') ?? str('backing-filename'),
    backingFormat: str('backing-filename-format'),
    ...(str('backing-filename') !== undefined ? { backingName: str('backing-filename') } : {}),
    ...(dataFile !== undefined ? { dataFile } : {}),
    ...(bitmaps.length > 0 ? { bitmaps } : {}),
  };
}

function parseBitmaps(raw: unknown): ImageBitmap[] {
  if (!Array.isArray(raw)) return [];
  const out: ImageBitmap[] = [];
  for (const b of raw as unknown[]) {
    if (typeof b !== 'object' || b === null) continue;
    const { name, flags, granularity } = b as Record<string, unknown>;
    if (typeof name !== 'string' || typeof granularity !== 'number' || !Array.isArray(flags)) continue;
    out.push({ name, granularity, flags: flags.filter((f): f is string => typeof f === 'string') });
  }
  return out;
}
