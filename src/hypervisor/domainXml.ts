/**
 * Just enough of libvirt's domain XML for backups: the disks with their
 * backing chains, memory, and the edits restore needs. libvirt writes this
 * XML itself in a stable shape, so targeted parsing is enough; we never
 * parse XML a user typed.
 */
export interface DomainDisk {
  /** file | block | network | volume */
  type: string;
  /** disk | cdrom | floppy | lun */
  device: string;
  target: string;
  /** driver type (image format), e.g. qcow2 or raw */
  format: string | undefined;
  /** top image path (file disks) */
  source: string | undefined;
  /** backing chain below the top, nearest first (paths of file backing stores) */
  backingChain: string[];
  /** format of each backingChain entry as libvirt records it (`<format type=…>`), same order */
  backingFormats: (string | undefined)[];
}

/** An attribute of one XML start tag, entities decoded. */
export function xmlAttr(tag: string, name: string): string | undefined {
  const m = new RegExp(`\\s${name}=(['"])(.*?)\\1`).exec(tag);
  return m ? decodeEntities(m[2] ?? '') : undefined;
}

export function decodeEntities(s: string): string {
  return s
    .replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_, d: string) => String.fromCodePoint(Number(d)))
    .replace(/&amp;/g, '&');
}

function diskBlocks(xml: string): string[] {
  return [...xml.matchAll(/<disk\b[^>]*>[\s\S]*?<\/disk>/g)].map((m) => m[0]);
}

export function parseDomainDisks(xml: string): DomainDisk[] {
  return diskBlocks(xml).map((block) => {
    const open = /<disk\b[^>]*>/.exec(block)?.[0] ?? '';
    const target = xmlAttr(/<target\b[^>]*>/.exec(block)?.[0] ?? '', 'dev') ?? '';
    const driver = /<driver\b[^>]*>/.exec(block)?.[0];
    // Sources appear top first, then each nested <backingStore>'s source.
    const sources = [...block.matchAll(/<source\b[^>]*>/g)].map((m) => xmlAttr(m[0], 'file') ?? xmlAttr(m[0], 'dev'));
    const [top, ...chain] = sources;
    // Each <backingStore> holds its own <format> before any nested one.
    const backingFormats = block
      .split(/<backingStore\b/)
      .slice(1)
      .filter((seg) => /<source\b/.test(seg.split(/<backingStore\b/)[0] ?? ''))
      .map((seg) => {
        const f = /<format\b[^>]*>/.exec(seg)?.[0];
        return f ? xmlAttr(f, 'type') : undefined;
      });
    return {
      type: xmlAttr(open, 'type') ?? 'file',
      device: xmlAttr(open, 'device') ?? 'disk',
      target,
      format: driver ? xmlAttr(driver, 'type') : undefined,
      source: top,
      backingChain: chain.filter((s): s is string => s !== undefined),
      backingFormats,
    };
  });
}

/** Guest memory in bytes (currentMemory if present, else memory). */
export function parseDomainMemoryBytes(xml: string): number {
  const m = /<currentMemory\b([^>]*)>(\d+)<\/currentMemory>/.exec(xml) ?? /<memory\b([^>]*)>(\d+)<\/memory>/.exec(xml);
  if (!m) return 0;
  const unit = xmlAttr(m[1] ?? '', 'unit') ?? 'KiB';
  const n = Number(m[2]);
  const factor = new Map<string, number>([
    ['b', 1], ['bytes', 1], ['k', 1024], ['kib', 1024], ['m', 1024 ** 2], ['mib', 1024 ** 2], ['g', 1024 ** 3], ['gib', 1024 ** 3],
    ['t', 1024 ** 4], ['tib', 1024 ** 4], ['kb', 1e3], ['mb', 1e6], ['gb', 1e9], ['tb', 1e12],
  ]);
  const f = factor.get(unit.toLowerCase());
  if (f === undefined) throw new Error(`unknown memory unit ${JSON.stringify(unit)} in domain XML`);
  return n * f;
}

export function parseDomainName(xml: string): string | undefined {
  const m = /<name>([^<]*)<\/name>/.exec(xml);
  return m ? decodeEntities(m[1] ?? '') : undefined;
}

/**
 * Remove every <backingStore> element (empty or nested) from the disks, so
 * that libvirt probes the chain from the image headers. Restoring a state
 * file with its embedded `<backingStore/>` makes QEMU open the new overlay
 * with no backing at all: the guest would see an empty disk.
 */
export function stripBackingStores(xml: string): string {
  let out = '';
  let i = 0;
  const openRe = /<backingStore\b[^>]*?(\/?)>/g;
  while (i < xml.length) {
    openRe.lastIndex = i;
    const m = openRe.exec(xml);
    if (!m) {
      out += xml.slice(i);
      break;
    }
    out += xml.slice(i, m.index).replace(/[ \t]*$/, '');
    if (m[1] === '/') {
      i = m.index + m[0].length;
    } else {
      i = skipBalanced(xml, m.index + m[0].length);
    }
    if (xml[i] === '\n') i += 1;
  }
  return out;
}

function skipBalanced(xml: string, from: number): number {
  let depth = 1;
  const re = /<backingStore\b[^>]*?(\/?)>|<\/backingStore>/g;
  re.lastIndex = from;
  let m: RegExpExecArray | null;
  while ((m = re.exec(xml)) !== null) {
    if (m[0].startsWith('</')) depth -= 1;
    else if (m[1] !== '/') depth += 1;
    if (depth === 0) return m.index + m[0].length;
  }
  throw new Error('unbalanced <backingStore> in domain XML');
}

/** `virsh domstate` output → state word. */
export type DomainRunState = 'running' | 'paused' | 'shut off' | 'shutdown' | 'crashed' | 'pmsuspended' | 'blocked' | 'idle' | 'in shutdown' | 'other';

export function parseDomState(stdout: string): DomainRunState {
  const s = stdout.trim().split('\n')[0]?.trim() ?? '';
  const known: DomainRunState[] = ['running', 'paused', 'shut off', 'shutdown', 'crashed', 'pmsuspended', 'blocked', 'idle', 'in shutdown'];
  return (known as string[]).includes(s) ? (s as DomainRunState) : 'other';
}
