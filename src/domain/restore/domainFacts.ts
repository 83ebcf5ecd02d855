import { parseDomainDisks, parseDomainMemoryBytes, parseDomainName, xmlAttr } from '../../hypervisor/domainXml.js';

/**
 * The facts of a libvirt domain definition that a restore compares and
 * decides, and targeted edits of them. Like src/hypervisor/domainXml.ts this
 * works on the text libvirt itself writes (stable element shapes, one
 * element per line); every edit returns new XML text and leaves the rest of
 * the document byte for byte as it was.
 */
export interface DomainFacts {
  name: string;
  uuid?: string;
  memoryKiB: number;
  currentMemoryKiB?: number;
  vcpus: number;
  disks: { target: string; source?: string; format?: string }[];
  interfaces: { mac?: string; type: string; source?: string; model?: string }[];
}

export function domainFacts(xml: string): DomainFacts {
  const name = parseDomainName(xml);
  if (name === undefined) throw new Error('domain XML has no <name>');
  const memory = memoryElement(xml, 'memory');
  if (memory === undefined) throw new Error('domain XML has no <memory>');
  const current = memoryElement(xml, 'currentMemory');
  const vcpu = /<vcpu\b[^>]*>\s*(\d+)\s*<\/vcpu>/.exec(xml);
  const uuid = /<uuid>\s*([^<]*?)\s*<\/uuid>/.exec(xml)?.[1];
  const facts: DomainFacts = {
    name,
    memoryKiB: elementKiB(memory.text),
    vcpus: vcpu ? Number(vcpu[1]) : 1,
    disks: parseDomainDisks(xml).map((d) => ({
      target: d.target,
      ...(d.source !== undefined ? { source: d.source } : {}),
      ...(d.format !== undefined ? { format: d.format } : {}),
    })),
    interfaces: interfaceElements(xml).map((el) => interfaceFacts(el.text)),
  };
  if (uuid !== undefined) facts.uuid = uuid;
  if (current !== undefined) facts.currentMemoryKiB = elementKiB(current.text);
  return facts;
}

/** One element found in the XML: its text and where it starts/ends. */
interface Found {
  text: string;
  start: number;
  end: number;
}

function memoryElement(xml: string, tag: 'memory' | 'currentMemory'): Found | undefined {
  // Digits directly inside: a <memory model='dimm'> device has child elements instead.
  const m = new RegExp(`<${tag}\\b[^>]*>\\s*\\d+\\s*</${tag}>`).exec(xml);
  return m ? { text: m[0], start: m.index, end: m.index + m[0].length } : undefined;
}

/** parseDomainMemoryBytes reads one element given on its own (it prefers currentMemory when both are present). */
function elementKiB(element: string): number {
  return Math.round(parseDomainMemoryBytes(element) / 1024);
}

function interfaceElements(xml: string): Found[] {
  return [...xml.matchAll(/<interface\b[^>]*?(?:\/>|>[\s\S]*?<\/interface>)/g)].map((m) => ({
    text: m[0],
    start: m.index,
    end: m.index + m[0].length,
  }));
}

function diskElements(xml: string): (Found & { target: string })[] {
  return [...xml.matchAll(/<disk\b[^>]*>[\s\S]*?<\/disk>/g)].map((m) => ({
    text: m[0],
    start: m.index,
    end: m.index + m[0].length,
    target: xmlAttr(/<target\b[^>]*>/.exec(m[0])?.[0] ?? '', 'dev') ?? '',
  }));
}

function interfaceFacts(block: string): DomainFacts['interfaces'][number] {
  const open = /<interface\b[^>]*>/.exec(block)?.[0] ?? '';
  const type = xmlAttr(open, 'type') ?? 'network';
  const out: DomainFacts['interfaces'][number] = { type };
  const mac = xmlAttr(/<mac\b[^>]*>/.exec(block)?.[0] ?? '', 'address');
  if (mac !== undefined) out.mac = mac.toLowerCase();
  const source = /<source\b[^>]*>/.exec(block)?.[0];
  if (source !== undefined) {
    const value = xmlAttr(source, 'network') ?? xmlAttr(source, 'bridge') ?? xmlAttr(source, 'dev') ?? xmlAttr(source, 'path');
    if (value !== undefined) out.source = value;
  }
  const model = xmlAttr(/<model\b[^>]*>/.exec(block)?.[0] ?? '', 'type');
  if (model !== undefined) out.model = model;
  return out;
}


/** Escapes text for an attribute value in single quotes (libvirt's style) or element content. */
function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/** Sets (or adds) one attribute of a start tag. */
function setAttr(tag: string, name: string, value: string): string {
  const re = new RegExp(`(\\s${name}=)(['"])(.*?)\\2`);
  if (re.test(tag)) return tag.replace(re, `$1'${escapeXml(value)}'`);
  return tag.replace(/^(<[A-Za-z]+)/, `$1 ${name}='${escapeXml(value)}'`);
}

function splice(xml: string, found: Found, replacement: string): string {
  return xml.slice(0, found.start) + replacement + xml.slice(found.end);
}

/**
 * Sets <memory> and <currentMemory> (the latter only if present, to
 * `currentKiB`, default the same as `kib`), both written in KiB.
 */
export function setMemoryKiB(xml: string, kib: number, currentKiB: number = kib): string {
  if (!Number.isSafeInteger(kib) || kib <= 0) throw new Error(`invalid memory size ${kib} KiB`);
  if (!Number.isSafeInteger(currentKiB) || currentKiB <= 0 || currentKiB > kib) {
    throw new Error(`invalid current memory size ${currentKiB} KiB (memory ${kib} KiB)`);
  }
  let out = xml;
  for (const [tag, value] of [['memory', kib], ['currentMemory', currentKiB]] as const) {
    const el = memoryElement(out, tag);
    if (el === undefined) {
      if (tag === 'memory') throw new Error('domain XML has no <memory>');
      continue;
    }
    const open = /^<[^>]*>/.exec(el.text)?.[0] ?? `<${tag}>`;
    out = splice(out, el, `${setAttr(open, 'unit', 'KiB')}${value}</${tag}>`);
  }
  return out;
}

/** Sets the number of vCPUs; a `current` attribute (fewer online at boot) is dropped so all n are online. */
export function setVcpus(xml: string, n: number): string {
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`invalid vCPU count ${n}`);
  const m = /<vcpu\b([^>]*)>\s*\d+\s*<\/vcpu>/.exec(xml);
  if (!m) throw new Error('domain XML has no <vcpu>');
  const attrs = (m[1] ?? '').replace(/\s+current=(['"]).*?\1/, '');
  return splice(xml, { text: m[0], start: m.index, end: m.index + m[0].length }, `<vcpu${attrs}>${n}</vcpu>`);
}

/** Sets the top source (file= or dev=) of the disk with this target; backing stores are left alone. */
export function setDiskSource(xml: string, target: string, path: string): string {
  const disk = diskElements(xml).find((d) => d.target === target);
  if (!disk) throw new Error(`domain XML has no disk with target ${target}`);
  const src = /<source\b[^>]*>/.exec(disk.text);
  let block: string;
  if (src) {
    const name = xmlAttr(src[0], 'dev') !== undefined && xmlAttr(src[0], 'file') === undefined ? 'dev' : 'file';
    block = disk.text.slice(0, src.index) + setAttr(src[0], name, path) + disk.text.slice(src.index + src[0].length);
  } else {
    // A disk without a source (empty cdrom): add one after <driver>, or after the start tag.
    const anchor = /<driver\b[^>]*>/.exec(disk.text) ?? /^<disk\b[^>]*>/.exec(disk.text);
    const at = anchor ? anchor.index + anchor[0].length : 0;
    const child = `${indentAt(xml, disk.start)}  `;
    block = `${disk.text.slice(0, at)}\n${child}<source file='${escapeXml(path)}'/>${disk.text.slice(at)}`;
  }
  return splice(xml, disk, block);
}

/** Sets the MAC address of the index-th <interface> (0-based, document order). */
export function setInterfaceMac(xml: string, index: number, mac: string): string {
  if (!isMac(mac)) throw new Error(`invalid MAC address ${JSON.stringify(mac)}`);
  const el = interfaceElements(xml)[index];
  if (!el) throw new Error(`domain XML has no interface number ${index}`);
  const m = /<mac\b[^>]*>/.exec(el.text);
  let block: string;
  if (m) {
    block = el.text.slice(0, m.index) + setAttr(m[0], 'address', mac.toLowerCase()) + el.text.slice(m.index + m[0].length);
  } else {
    const open = /^<interface\b[^>]*>/.exec(el.text)?.[0] ?? '';
    const indent = indentAt(xml, el.start);
    const macLine = `\n${indent}  <mac address='${mac.toLowerCase()}'/>`;
    block = open.endsWith('/>')
      ? `${open.slice(0, -2).trimEnd()}>${macLine}\n${indent}</interface>`
      : `${open}${macLine}${el.text.slice(open.length)}`;
  }
  return splice(xml, el, block);
}

export function isMac(mac: string): boolean {
  return /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac);
}

export function setName(xml: string, name: string): string {
  const m = /<name>[^<]*<\/name>/.exec(xml);
  if (!m) throw new Error('domain XML has no <name>');
  return splice(xml, { text: m[0], start: m.index, end: m.index + m[0].length }, `<name>${escapeXml(name)}</name>`);
}

/** Removes <uuid> (with its line) so that libvirt assigns a new one on define. */
export function removeUuid(xml: string): string {
  return xml.replace(/^[ \t]*<uuid>[^<]*<\/uuid>[ \t]*\r?\n/m, '').replace(/<uuid>[^<]*<\/uuid>/, '');
}

/** The whole <disk> element of a target, or undefined. */
export function diskElement(xml: string, target: string): string | undefined {
  return diskElements(xml).find((d) => d.target === target)?.text;
}

/** The whole index-th <interface> element, or undefined. */
export function interfaceElement(xml: string, index: number): string | undefined {
  return interfaceElements(xml)[index]?.text;
}

/** Removes the disk with this target (with its line). */
export function removeDisk(xml: string, target: string): string {
  const disk = diskElements(xml).find((d) => d.target === target);
  if (!disk) throw new Error(`domain XML has no disk with target ${target}`);
  return removeWithLine(xml, disk);
}

/** Removes the index-th interface (with its line). */
export function removeInterface(xml: string, index: number): string {
  const el = interfaceElements(xml)[index];
  if (!el) throw new Error(`domain XML has no interface number ${index}`);
  return removeWithLine(xml, el);
}

/**
 * Adds a <disk> or <interface> element (as found in another definition of
 * the same domain) after the last element of its kind, else at the end of
 * <devices>. libvirt puts devices in its canonical order on define; among
 * interfaces the order is kept, so an added interface becomes the last one.
 */
export function addDeviceElement(xml: string, element: string): string {
  const kind = /^<(disk|interface)\b/.exec(element.trimStart())?.[1];
  if (kind === undefined) throw new Error('only <disk> and <interface> elements can be added');
  const same = kind === 'disk' ? diskElements(xml) : interfaceElements(xml);
  const last = same[same.length - 1];
  const reindented = reindent(element.trim());
  if (last) {
    const indent = indentAt(xml, last.start);
    return `${xml.slice(0, last.end)}\n${indent}${reindented(indent)}${xml.slice(last.end)}`;
  }
  const close = /^([ \t]*)<\/devices>/m.exec(xml);
  if (!close) throw new Error('domain XML has no </devices>');
  const indent = `${close[1] ?? ''}  `;
  return `${xml.slice(0, close.index)}${indent}${reindented(indent)}\n${xml.slice(close.index)}`;
}

/** Re-indents continuation lines of an element so its start tag sits at `indent`. */
function reindent(element: string): (indent: string) => string {
  const lines = element.split('\n');
  const rest = lines.slice(1);
  const closing = rest[rest.length - 1];
  const base = closing === undefined ? '' : (/^[ \t]*/.exec(closing)?.[0] ?? '');
  return (indent) =>
    [lines[0] ?? '', ...rest.map((l) => (l.startsWith(base) ? indent + l.slice(base.length) : l))].join('\n');
}

function indentAt(xml: string, pos: number): string {
  const lineStart = xml.lastIndexOf('\n', pos - 1) + 1;
  return /^[ \t]*/.exec(xml.slice(lineStart, pos))?.[0] ?? '';
}

function removeWithLine(xml: string, found: Found): string {
  const lineStart = xml.lastIndexOf('\n', found.start - 1) + 1;
  const before = xml.slice(lineStart, found.start);
  const afterNl = xml[found.end] === '\n' ? found.end + 1 : found.end;
  if (/^[ \t]*$/.test(before)) return xml.slice(0, lineStart) + xml.slice(afterNl);
  return xml.slice(0, found.start) + xml.slice(found.end);
}
