import { access, constants, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../../src/hypervisor/exec.js';
import { Virsh } from '../../src/hypervisor/Virsh.js';

export const LIBVIRT_URI = process.env.STONEY_LIBVIRT_URI ?? 'qemu:///system';
export const virsh = new Virsh(LIBVIRT_URI);

/** Fails (never skips) when libvirtd does not answer: CI must notice. */
export async function requireLibvirt(): Promise<void> {
  try {
    await run('virsh', ['-c', LIBVIRT_URI, 'version'], { timeoutMs: 20_000 });
  } catch (err) {
    throw new Error(`libvirtd does not answer on ${LIBVIRT_URI}; run deploy/setup-host.sh first. ${(err as Error).message}`);
  }
}

async function kvmUsable(): Promise<boolean> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface TinyDisk {
  target: string;
  path: string;
}

export interface TinyVm {
  name: string;
  disks: TinyDisk[];
  xml: string;
}

export interface TinyVmOptions {
  name: string;
  /** directory the images go to, e.g. <imageRoot>/vm-persistent/<pool> */
  imageDir: string;
  targets?: string[];
  running: boolean;
  memoryMiB?: number;
  sizeMiB?: number;
  /** pattern byte written at offset 0, length 1 MiB, before the VM starts */
  initialPattern?: number;
  /** one user-mode virtio NIC (libvirt assigns its MAC) */
  nic?: boolean;
  /**
   * A file loaded into guest RAM at start (QEMU's generic loader), so that the
   * memory state is realistic rather than all zeros (reference item 7).
   */
  ramLoader?: string;
}

/** A VM without guest OS: 32 MiB RAM, qcow2 disks, sits in firmware. */
export async function createTinyVm(o: TinyVmOptions): Promise<TinyVm> {
  await mkdir(o.imageDir, { recursive: true });
  const targets = o.targets ?? ['vda'];
  const disks: TinyDisk[] = [];
  for (const t of targets) {
    const p = path.join(o.imageDir, `${o.name}-${t}.qcow2`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', p, `${o.sizeMiB ?? 64}M`]);
    if (o.initialPattern !== undefined) await run('qemu-io', ['-c', `write -P ${o.initialPattern} 0 1M`, p]);
    disks.push({ target: t, path: p });
  }
  const type = (await kvmUsable()) ? 'kvm' : 'qemu';
  const ns = o.ramLoader ? " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'" : '';
  const loader = o.ramLoader
    ? `  <qemu:commandline><qemu:arg value='-device'/><qemu:arg value='loader,file=${o.ramLoader},addr=0x1000000,force-raw=on'/></qemu:commandline>\n`
    : '';
  const xml = `<domain type='${type}'${ns}>
  <name>${o.name}</name>
  <memory unit='MiB'>${o.memoryMiB ?? 32}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
${disks.map((d) => `    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${d.path}'/><target dev='${d.target}' bus='virtio'/></disk>`).join('\n')}
${o.nic ? "    <interface type='user'><model type='virtio'/></interface>\n" : ''}    <memballoon model='none'/>
  </devices>
${loader}</domain>
`;
  const xmlFile = path.join(o.imageDir, `${o.name}.xml`);
  const { writeFile } = await import('node:fs/promises');
  await writeFile(xmlFile, xml);
  await virsh.define(xmlFile);
  await rm(xmlFile);
  if (o.running) await virsh.start(o.name);
  return { name: o.name, disks, xml };
}

/** MAC addresses of the domain's interfaces, in order (persistent definition). */
export async function macsOf(vm: string): Promise<string[]> {
  return [...(await virsh.dumpXml(vm, { inactive: true })).matchAll(/<mac address='([^']+)'/g)].map((m) => m[1] as string);
}

export async function removeVm(name: string): Promise<void> {
  // A test that restarts libvirtd leaves it away for a second or so: wait for it rather than leave the VM.
  for (let i = 0; ; i++) {
    try {
      if (!(await virsh.domainExists(name))) return;
      break;
    } catch (err) {
      if (i >= 20 || !/failed to connect/i.test(String(err))) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  if ((await virsh.domState(name)) !== 'shut off') await virsh.destroy(name).catch(() => undefined);
  await virsh.undefine(name).catch(() => undefined);
}

/** QEMU's device alias for a target (virtio-disk0, …) from the live XML. */
async function alias(vm: string, target: string): Promise<string> {
  const xml = await virsh.dumpXml(vm);
  for (const m of xml.matchAll(/<disk\b[\s\S]*?<\/disk>/g)) {
    if (m[0].includes(`dev='${target}'`)) {
      const a = /<alias name='([^']+)'/.exec(m[0]);
      if (a?.[1]) return a[1];
    }
  }
  throw new Error(`no alias for ${target} in ${vm}`);
}

/**
 * Write as the guest would: through QEMU's block layer into the current top
 * image of the running VM (reference/libvirt-and-qemu.md item 5).
 */
export async function guestWrite(vm: string, target: string, pattern: number, offset: string, length: string): Promise<void> {
  const dev = `/machine/peripheral/${await alias(vm, target)}/virtio-backend`;
  const out = await virsh.hmp(vm, `qemu-io -d ${dev} "write -P ${pattern} ${offset} ${length}"`);
  if (/error|fail/i.test(out)) throw new Error(`guest write failed: ${out}`);
}

/**
 * Read as the guest would and check a pattern; true when every byte matches.
 * HMP's qemu-io prints to QEMU's stdout, which libvirt sends to the domain
 * log, so the answer is read from what the command appended there.
 */
export async function guestReadMatches(vm: string, target: string, pattern: number, offset: string, length: string): Promise<boolean> {
  const dev = `/machine/peripheral/${await alias(vm, target)}/virtio-backend`;
  const log = `/var/log/libvirt/qemu/${vm}.log`;
  const { stat, readFile } = await import('node:fs/promises');
  const before = (await stat(log)).size;
  await virsh.hmp(vm, `qemu-io -d ${dev} "read -P ${pattern} ${offset} ${length}"`);
  for (let i = 0; i < 50; i++) {
    const out = (await readFile(log)).subarray(before).toString('utf8');
    if (/Pattern verification failed/.test(out)) return false;
    if (/read \d+\/\d+ bytes/.test(out)) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no qemu-io answer in ${log}`);
}

/** Check a pattern in an image that no running QEMU writes to. */
export async function imageMatches(image: string, pattern: number, offset: string, length: string, format = 'qcow2'): Promise<boolean> {
  const r = await run('qemu-io', ['-r', '-U', '-f', format, '-c', `read -P ${pattern} ${offset} ${length}`, image], { okExitCodes: [0, 1] });
  if (/Pattern verification failed/.test(r.stdout + r.stderr)) return false;
  if (r.exitCode !== 0) throw new Error(`qemu-io could not read ${image}: ${r.stderr}`);
  return true;
}

export async function backingFileOf(image: string): Promise<string | undefined> {
  const r = await run('qemu-img', ['info', '-U', '--output=json', image]);
  const o = JSON.parse(r.stdout) as Record<string, unknown>;
  return (o['full-backing-filename'] ?? o['backing-filename']) as string | undefined;
}

/**
 * Restart libvirtd the way deploy/setup-host.sh runs it on a host without
 * systemd (`libvirtd -d`): SIGTERM to the running daemon (its QEMU processes
 * keep running), wait for it to exit, start it again, wait until it answers.
 */
export async function restartLibvirtd(): Promise<void> {
  const { readFile } = await import('node:fs/promises');
  const pid = Number((await readFile('/run/libvirtd.pid', 'utf8')).trim());
  if (!Number.isInteger(pid) || pid <= 1) throw new Error(`no libvirtd pid in /run/libvirtd.pid: ${pid}`);
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  process.kill(pid, 'SIGTERM');
  const end = Date.now() + 30_000;
  while (alive()) {
    if (Date.now() > end) throw new Error(`libvirtd ${pid} did not exit within 30 s of SIGTERM`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await run('libvirtd', ['-d'], { timeoutMs: 30_000 });
  await requireLibvirt();
}
