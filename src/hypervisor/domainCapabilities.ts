import { decodeEntities } from './domainXml.js';

/** What `virsh domcapabilities` says this node runs a domain with. */
export interface DomainCapabilities {
  /** the emulator binary libvirt uses for this virt type and arch */
  emulator: string;
  /** firmware files (loaders) the node offers */
  firmware: string[];
}

export function parseDomainCapabilities(xml: string): DomainCapabilities {
  const emulator = /<path>([^<]+)<\/path>/.exec(xml)?.[1];
  if (emulator === undefined) throw new Error('domcapabilities names no emulator <path>');
  const loader = /<loader\b[^>]*>([\s\S]*?)<\/loader>/.exec(xml)?.[1] ?? '';
  // Direct <value> children are firmware paths; the ones inside <enum> are option values.
  const firmware = [...loader.replace(/<enum\b[\s\S]*?<\/enum>/g, '').matchAll(/<value>([^<]+)<\/value>/g)].map((m) => decodeEntities(m[1] as string));
  return { emulator: decodeEntities(emulator), firmware };
}
