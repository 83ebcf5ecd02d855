import path from 'node:path';
import { BackupError } from '../errors.js';
import { ReturnCode } from '../returnCodes.js';
import { attr, canonicalXml, childElements, parseStrictXml, serializeXml, textOf, XmlSubsetError, type XmlElement } from './strictXml.js';

/**
 * The domain definition a restore defines, built from an allowlist.
 *
 * The backup's XML is input from whoever could write the backup directory,
 * and libvirt defines and starts it as root: a `<disk type='block'>` on
 * /dev/sda, a cdrom on /etc/shadow, a `<filesystem>` of `/`, a `<hostdev>`,
 * `<qemu:commandline>` or a serial port logging into /etc/cron.d would give
 * that writer the hypervisor. So every element must be one the project
 * knows to be harmless, with its attributes checked; every host path it
 * names (disk sources, nvram, kernel, initrd, logs, file-backed character
 * devices) must lie inside the image roots; the emulator is the node's.
 *
 * Anything else is accepted only when the live definition (the VM as it
 * is defined now — for a restore as new, the original VM) has exactly the
 * same element at the same place: the restore then only keeps what an
 * administrator configured on this host already.
 */
export interface DomainAllowlistContext {
  imageRoots: readonly string[];
  /** the VM's current definition (or the original's, for a restore as new); undefined if none */
  liveXml: string | undefined;
  /** the emulator the domain runs with: the live definition's, else the node's default */
  emulator: string;
  /** firmware files the node offers (domain capabilities' loader values) */
  firmware?: readonly string[];
  /** the name the domain must have: the VM restored, or the new name of a restore as new */
  name: string;
}

type Check = (el: XmlElement, at: string, ctx: Checker) => void;
/** attribute name → allowed values, or a check of the value */
type AttrRule = readonly string[] | 'any' | 'path' | ((v: string, at: string, ctx: Checker) => void);
interface Spec {
  attrs?: Record<string, AttrRule>;
  /** element name → spec; 'any' = a subtree without host paths, accepted whole */
  children?: Record<string, Spec | 'any'>;
  /** text content: 'path' = a host path inside the image roots */
  text?: 'any' | 'path' | ((v: string, at: string, ctx: Checker) => void);
  /** extra checks on the whole element */
  check?: Check;
}

const LEAF: Spec = { attrs: {}, text: 'any' };

/** Attributes that only describe a device's guest-side address or name. */
const address: Spec | 'any' = 'any';
const alias: Spec = { attrs: { name: 'any' } };

/** Character devices (serial, console, channel, parallel): no host device, no network, files only in the roots. */
const chardev: Spec = {
  attrs: { type: ['pty', 'unix', 'file', 'spicevmc', 'qemu-vdagent', 'null', 'vc'] },
  children: {
    source: { attrs: { path: 'path', mode: ['bind', 'connect'], append: ['on', 'off'], channel: 'any' } },
    target: 'any',
    log: { attrs: { file: 'path', append: ['on', 'off'] } },
    address,
    alias,
  },
  check: (el, at, c) => {
    const type = attr(el, 'type');
    const src = childElements(el).find((x) => x.name === 'source');
    // A pty's source path is the host side libvirt allocates; it is never taken from input.
    if (type === 'pty' && src) c.refuse(`${at}/source`, 'a pty has no source to restore');
    if (type === 'file' && (!src || attr(src, 'path') === undefined)) c.refuse(at, 'a file character device needs a path in the image roots');
  },
};

const spec: Spec = {
  attrs: { type: ['kvm', 'qemu'], id: 'any' },
  children: {
    name: LEAF,
    uuid: LEAF,
    genid: LEAF,
    title: LEAF,
    description: LEAF,
    memory: { attrs: { unit: 'any', dumpCore: ['on', 'off'] }, text: 'any' },
    currentMemory: { attrs: { unit: 'any' }, text: 'any' },
    maxMemory: { attrs: { unit: 'any', slots: 'any' }, text: 'any' },
    vcpu: { attrs: { placement: ['static', 'auto'], cpuset: 'any', current: 'any' }, text: 'any' },
    vcpus: 'any',
    iothreads: LEAF,
    memoryBacking: {
      children: {
        hugepages: 'any',
        nosharepages: {},
        // file-backed memory would put guest RAM in a host file: not here
        source: { attrs: { type: ['anonymous', 'memfd'] } },
        access: { attrs: { mode: ['shared', 'private'] } },
        allocation: { attrs: { mode: ['immediate', 'ondemand'], threads: 'any' } },
        discard: {},
      },
    },
    // smbios strings only; fw_cfg entries can read host files into the guest
    sysinfo: { attrs: { type: ['smbios'] }, children: { bios: 'any', system: 'any', baseBoard: 'any', chassis: 'any', processor: 'any', memory: 'any', oemStrings: 'any' } },
    os: {
      attrs: { firmware: ['efi', 'bios'] },
      children: {
        type: { attrs: { arch: 'any', machine: 'any' }, text: 'any' },
        loader: { attrs: { readonly: ['yes', 'no'], type: ['rom', 'pflash'], secure: ['yes', 'no'], stateless: ['yes', 'no'], format: ['raw', 'qcow2'] }, text: (v, at, c) => c.firmwarePath(v, at) },
        nvram: { attrs: { template: (v, at, c) => c.firmwarePath(v, at), format: ['raw', 'qcow2'], templateFormat: ['raw', 'qcow2'] }, text: (v, at, c) => c.nvramPath(v, at) },
        boot: { attrs: { dev: ['hd', 'cdrom', 'fd', 'network'] } },
        bootmenu: { attrs: { enable: ['yes', 'no'], timeout: 'any' } },
        bios: { attrs: { useserial: ['yes', 'no'], rebootTimeout: 'any' } },
        smbios: { attrs: { mode: ['emulate', 'host', 'sysinfo'] } },
        kernel: { text: 'path' },
        initrd: { text: 'path' },
        dtb: { text: 'path' },
        cmdline: LEAF,
        acpi: { children: { table: { attrs: { type: 'any' }, text: 'path' } } },
        firmware: { children: { feature: { attrs: { enabled: ['yes', 'no'], name: 'any' } } } },
      },
    },
    features: 'any',
    cpu: 'any',
    clock: 'any',
    on_poweroff: LEAF,
    on_reboot: LEAF,
    on_crash: LEAF,
    on_lockfailure: LEAF,
    pm: 'any',
    perf: 'any',
    devices: {
      children: {
        emulator: { text: 'any' }, // replaced by the pinned emulator
        disk: {
          attrs: { type: ['file'], device: ['disk', 'cdrom', 'floppy'], snapshot: 'any', model: 'any' },
          children: {
            driver: {
              attrs: {
                name: ['qemu'], type: ['raw', 'qcow2'], cache: 'any', io: 'any', ioeventfd: 'any', event_idx: 'any', copy_on_read: 'any',
                discard: 'any', detect_zeroes: 'any', error_policy: 'any', rerror_policy: 'any', queues: 'any', queue_size: 'any', iothread: 'any', packed: 'any',
              },
            },
            source: { attrs: { file: 'path', startupPolicy: ['mandatory', 'requisite', 'optional'], index: 'any' } },
            target: { attrs: { dev: 'any', bus: ['virtio', 'sata', 'scsi', 'ide', 'usb', 'fdc'], tray: 'any', removable: 'any', rotation_rate: 'any' } },
            address,
            alias,
            boot: { attrs: { order: 'any', loadparm: 'any' } },
            readonly: {},
            shareable: {},
            transient: {},
            serial: LEAF,
            wwn: LEAF,
            vendor: LEAF,
            product: LEAF,
            blockio: 'any',
            iotune: 'any',
            geometry: 'any',
          },
          check: (el, at, c) => {
            // A file disk may carry no source (an empty cdrom); any source must be a file path.
            const src = childElements(el).find((x) => x.name === 'source');
            if (src && attr(src, 'file') === undefined) c.refuse(`${at}/source`, 'a file disk names its image with file=');
          },
        },
        controller: 'any',
        interface: {
          attrs: { type: ['network', 'bridge', 'user'] },
          children: {
            mac: { attrs: { address: 'any', type: 'any', check: 'any' } },
            source: { attrs: { network: 'any', portgroup: 'any', bridge: 'any' } },
            model: { attrs: { type: 'any' } },
            address,
            alias,
            boot: { attrs: { order: 'any', loadparm: 'any' } },
            link: { attrs: { state: ['up', 'down'] } },
            mtu: { attrs: { size: 'any' } },
            driver: { attrs: { name: ['qemu', 'vhost'], queues: 'any', txmode: 'any', ioeventfd: 'any', event_idx: 'any', rx_queue_size: 'any', tx_queue_size: 'any', packed: 'any' }, children: { host: 'any', guest: 'any' } },
            // a tap name only; managed='no' would take over an existing host device
            target: { attrs: { dev: 'any' } },
            rom: { attrs: { bar: ['on', 'off'], enabled: ['yes', 'no'], file: 'path' } },
            bandwidth: 'any',
            vlan: 'any',
            filterref: 'any',
            virtualport: 'any',
            coalesce: 'any',
            ip: 'any',
            route: 'any',
          },
        },
        input: { attrs: { type: ['mouse', 'tablet', 'keyboard'], bus: ['ps2', 'usb', 'virtio', 'xen'] }, children: { address, alias } },
        graphics: {
          attrs: {
            type: ['vnc', 'spice'], port: 'any', autoport: 'any', websocket: 'any', listen: 'any', keymap: 'any', passwd: 'any', passwdValidTo: 'any',
            connected: 'any', sharePolicy: 'any', defaultMode: 'any', tlsPort: 'any',
          },
          children: {
            listen: { attrs: { type: ['address', 'network', 'none'], address: 'any', network: 'any' } },
            channel: 'any', image: 'any', jpeg: 'any', zlib: 'any', playback: 'any', streaming: 'any', mouse: 'any', clipboard: 'any', filetransfer: 'any',
            gl: { attrs: { enable: ['no'] } },
            audio: { attrs: { id: 'any' } },
          },
        },
        video: {
          children: {
            model: {
              attrs: { type: 'any', vram: 'any', vram64: 'any', vgamem: 'any', ram: 'any', heads: 'any', primary: ['yes', 'no'], blob: ['on', 'off'] },
              // rendernode names a host device: it must be inside the image roots like every other host path.
              children: { acceleration: { attrs: { accel3d: ['yes', 'no'], accel2d: ['yes', 'no'], rendernode: 'path' } }, resolution: 'any' },
            },
            address,
            alias,
            driver: { attrs: { name: ['qemu'] } },
          },
        },
        sound: 'any',
        // audio backends that write or read host files or devices are out
        audio: { attrs: { id: 'any', type: ['none', 'spice'] }, children: { input: 'any', output: 'any' } },
        memballoon: { attrs: { model: 'any', autodeflate: 'any', freePageReporting: 'any' }, children: { address, alias, stats: 'any', driver: 'any' } },
        rng: {
          attrs: { model: ['virtio', 'virtio-transitional', 'virtio-non-transitional'] },
          children: {
            backend: { attrs: { model: ['random', 'builtin'] }, text: (v, at, c) => { if (!['', '/dev/urandom', '/dev/random', '/dev/hwrng'].includes(v.trim())) c.refuse(at, `rng source ${JSON.stringify(v)} is not a random device`); } },
            rate: 'any', address, alias, driver: 'any',
          },
        },
        watchdog: 'any',
        panic: 'any',
        serial: chardev,
        console: chardev,
        channel: chardev,
        parallel: chardev,
        hub: 'any',
        redirdev: { attrs: { bus: ['usb'], type: ['spicevmc'] }, children: { address, alias, boot: 'any' } },
        vsock: { attrs: { model: 'any' }, children: { cid: 'any', address, alias } },
        iommu: 'any',
      },
    },
  },
};

function hasNamespaced(el: XmlElement): boolean {
  return el.name.includes(':') || el.attrs.some(([k]) => k.includes(':')) || childElements(el).some(hasNamespaced);
}

class Checker {
  readonly refusals: string[] = [];
  private readonly liveByPath = new Map<string, Set<string>>();
  constructor(
    readonly ctx: DomainAllowlistContext,
    live: XmlElement | undefined,
    readonly targetName: string,
  ) {
    if (live) this.index(live, '');
  }

  private index(el: XmlElement, parent: string): void {
    const at = `${parent}/${el.name}`;
    let s = this.liveByPath.get(at);
    if (!s) this.liveByPath.set(at, (s = new Set()));
    s.add(canonicalXml(el));
    for (const c of childElements(el)) this.index(c, at);
  }

  /** Exactly this element at this place in the live definition. */
  inLive(el: XmlElement, at: string): boolean {
    return this.liveByPath.get(at)?.has(canonicalXml(el)) ?? false;
  }

  refuse(at: string, why: string): void {
    this.refusals.push(`${at}: ${why}`);
  }

  insideRoots(p: string): boolean {
    return (
      path.isAbsolute(p) &&
      !p.includes('\0') &&
      path.normalize(p) === p &&
      this.ctx.imageRoots.some((r) => {
        const rel = path.relative(path.resolve(r), p);
        return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
      })
    );
  }

  hostPath(v: string, at: string): void {
    if (!this.insideRoots(v)) this.refuse(at, `${JSON.stringify(v)} is not a path inside the image roots ${this.ctx.imageRoots.join(', ')}`);
  }

  /** Firmware is read by QEMU: a file the node offers, or one in the image roots. */
  firmwarePath(v: string, at: string): void {
    const p = v.trim();
    if ((this.ctx.firmware ?? []).includes(p) || this.insideRoots(p)) return;
    this.refuse(at, `firmware ${JSON.stringify(p)} is neither offered by this node nor inside the image roots`);
  }

  /** nvram is written by QEMU: in the image roots or libvirt's own nvram directory, under this VM's name. */
  nvramPath(v: string, at: string): void {
    const p = v.trim();
    if (this.insideRoots(p)) return;
    if (path.normalize(p) === p && path.dirname(p) === '/var/lib/libvirt/qemu/nvram' && path.basename(p).startsWith(`${this.targetName}_`)) return;
    this.refuse(at, `nvram ${JSON.stringify(p)} is neither in the image roots nor this VM's file in /var/lib/libvirt/qemu/nvram`);
  }

  walk(el: XmlElement, s: Spec, at: string): void {
    for (const [k, v] of el.attrs) {
      const rule = s.attrs?.[k];
      if (rule === undefined) {
        this.refuse(at, `attribute ${k}=${JSON.stringify(v)} is not allowed`);
      } else if (rule === 'path') {
        this.hostPath(v, `${at}@${k}`);
      } else if (typeof rule === 'function') {
        rule(v, `${at}@${k}`, this);
      } else if (rule !== 'any' && !rule.includes(v)) {
        this.refuse(at, `${k}=${JSON.stringify(v)} is not one of ${rule.join(', ')}`);
      }
    }
    const text = textOf(el);
    if (/[^ \t\r\n]/.test(text)) {
      if (s.text === undefined) this.refuse(at, 'unexpected text');
      else if (s.text === 'path') this.hostPath(text.trim(), at);
      else if (typeof s.text === 'function') s.text(text, at, this);
    }
    for (const c of childElements(el)) {
      const cat = `${at}/${c.name}`;
      const cs = s.children?.[c.name];
      if (cs === 'any') {
        // Accepted whole: still no namespaced (qemu:…) element anywhere inside.
        if (hasNamespaced(c) && !this.inLive(c, cat)) this.refuse(cat, 'namespaced element inside');
        continue;
      }
      if (cs === undefined) {
        if (!this.inLive(c, cat)) this.refuse(cat, 'element is not allowed (only kept when the live definition has exactly the same)');
        continue;
      }
      const before = this.refusals.length;
      this.walk(c, cs, cat);
      cs.check?.(c, cat, this);
      // A known element with a refused detail is still fine when it is exactly the live one.
      if (this.refusals.length > before && this.inLive(c, cat)) this.refusals.length = before;
    }
  }
}

/**
 * Checks the decided definition against the allowlist and returns the XML to
 * define: serialized from the checked tree, with the emulator pinned.
 * Throws BackupError(unsafeDomainDefinition) listing every refusal.
 */
export function allowlistedDomainXml(xml: string, ctx: DomainAllowlistContext): string {
  let tree: XmlElement;
  let live: XmlElement | undefined;
  try {
    tree = parseStrictXml(xml);
  } catch (err) {
    if (err instanceof XmlSubsetError) throw new BackupError(`the domain definition is not plain libvirt XML: ${err.message}`, ReturnCode.unsafeDomainDefinition, { cause: err });
    throw err;
  }
  try {
    live = ctx.liveXml === undefined ? undefined : parseStrictXml(ctx.liveXml);
  } catch {
    live = undefined; // libvirt wrote it; if it is odd, nothing is kept on its account
  }
  if (tree.name !== 'domain') throw new BackupError(`the definition's root is <${tree.name}>, not <domain>`, ReturnCode.unsafeDomainDefinition);
  const c = new Checker(ctx, live, ctx.name);
  // Another VM's name or UUID would redefine that VM: the definition must be this VM's.
  const only = (n: string) => childElements(tree).filter((x) => x.name === n);
  const names = only('name');
  if (names.length !== 1 || textOf(names[0] as XmlElement) !== ctx.name) c.refuse('/domain/name', `the domain must be named ${JSON.stringify(ctx.name)}`);
  const uuids = only('uuid');
  const liveUuid = live ? childElements(live).find((x) => x.name === 'uuid') : undefined;
  if (uuids.length > 1) c.refuse('/domain/uuid', 'more than one <uuid>');
  const uuid = uuids[0] ? textOf(uuids[0]).trim() : undefined;
  if (uuid !== undefined && liveUuid !== undefined && uuid.toLowerCase() !== textOf(liveUuid).trim().toLowerCase()) {
    c.refuse('/domain/uuid', `UUID ${uuid} is not the VM's (${textOf(liveUuid).trim()})`);
  }
  // Namespace declarations (xmlns:qemu …) only with the elements they serve, and only as the live one has them.
  const liveNs = new Set((live?.attrs ?? []).filter(([k]) => k.startsWith('xmlns')).map(([k, v]) => `${k}=${v}`));
  const rootAttrs = tree.attrs.filter(([k, v]) => {
    if (!k.startsWith('xmlns')) return true;
    if (!liveNs.has(`${k}=${v}`)) c.refuse('/domain', `namespace ${k}=${JSON.stringify(v)} is not allowed`);
    return false;
  });
  c.walk({ ...tree, attrs: rootAttrs }, spec, '/domain');
  if (c.refusals.length) {
    throw new BackupError(`the domain definition is refused: ${c.refusals.join('; ')}`, ReturnCode.unsafeDomainDefinition);
  }
  for (const d of childElements(tree)) {
    if (d.name !== 'devices') continue;
    for (const e of childElements(d)) if (e.name === 'emulator') e.children = [ctx.emulator];
  }
  return `${serializeXml(tree)}\n`;
}
