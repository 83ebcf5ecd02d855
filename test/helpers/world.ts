import { BackupLayout } from '../../src/domain/layout.js';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { startSlapd, ldapAdd, ldapModify, type PrivateSlapd } from './slapd.js';
import { startSlapdPair, type SlapdPair } from './slapdPair.js';
import { createTinyVm, macsOf, removeVm, requireLibvirt, LIBVIRT_URI, type TinyVm } from './libvirt.js';
import { connectDirectory, type DirectoryConnectionOptions } from '../../src/directory/connect.js';
import type { LdapBackupDirectory } from '../../src/directory/LdapBackupDirectory.js';
import { PollingChangeFeed } from '../../src/directory/PollingChangeFeed.js';
import { createChangeFeed } from '../../src/directory/createChangeFeed.js';
import { NodeDaemon, type NodeDaemonOptions } from '../../src/node/NodeDaemon.js';
import { QemuImg } from '../../src/hypervisor/QemuImg.js';
import { Virsh } from '../../src/hypervisor/Virsh.js';
import { runBackupBatch } from '../../src/control/runBackupBatch.js';
import { defaultBatchPolicy } from '../../src/control/decideBatch.js';
import { devicesEntryLines, diskEntryLines, interfaceEntryLines, ldifText, vmEntryLines } from './directoryEntries.js';
import type { BackupDirectory, ChangeFeed, LeafEntry } from '../../src/directory/types.js';
import { run } from '../../src/hypervisor/exec.js';

export const POOL = '0f83f084-8080-413e-b558-b678e504836e';
/**
 * The storage pool the disks live in: `<imageRoot>/vm-persistent/<STORAGE_POOL>`.
 * In a real stoney cloud it is another UUID than the VM pool (POOL); backups
 * and retain copies go below it, as in the original implementation.
 */
export const STORAGE_POOL = 'f9dc3c13-5e3a-4b1c-9d2e-7a6b5c4d3e21';
export const SERVICE = 'ou=virtualization,ou=services,o=stepping-stone,c=ch';
export const vmDn = (vm: string) => `sstVirtualMachine=${vm},ou=virtual machines,${SERVICE}`;

function cronLines(cron: string): string {
  const [minute, hour, day, month, dow] = cron.split(/\s+/);
  return `sstCronMinute: ${minute}\nsstCronHour: ${hour}\nsstCronDay: ${day}\nsstCronMonth: ${month}\nsstCronDayOfWeek: ${dow}\nsstCronActive: TRUE\n`;
}

function connectionOf(slapd: PrivateSlapd, pair: SlapdPair | undefined): DirectoryConnectionOptions {
  return {
    url: slapd.url,
    ...(pair ? { urls: pair.urls } : {}),
    bindDn: slapd.bindDn,
    passwordFile: slapd.passwordFile,
    baseDn: slapd.baseDn,
  };
}

export interface WorldVmOptions {
  targets?: string[];
  running: boolean;
  pattern?: number;
  /** extra attributes for the VM's own ou=backup (settings are always set there) */
  backupAttributes?: string[];
  /** skip creating the libvirt domain (a VM libvirt does not know) */
  noDomain?: boolean;
  node?: string;
  /** own schedule: the five crontab fields, e.g. '0 3 * * *' (adds sstCronObjectClass) */
  cron?: string;
  /** put the disks here instead of the image root (to test refusals) */
  imageDir?: string;
  /** a user-mode NIC, also described in the directory (sstInterface=net0 with its MAC) */
  nic?: boolean;
  /** sstBackupSnapshotMethod on the VM's ou=backup (absent: the default, live) */
  method?: 'live' | 'save';
  /** guest RAM in MiB (default 32) */
  memoryMiB?: number;
  /** virtual disk size in MiB (default 64) */
  sizeMiB?: number;
  /** file loaded into guest RAM at start (see createTinyVm) */
  ramLoader?: string;
}

/**
 * One e2e world: a private slapd with the sample tree, temp image/retain/
 * backup roots on one filesystem, tiny VMs registered in both libvirt and the
 * directory, and node daemons running in-process. cleanup() removes it all.
 */
export class World {
  readonly vms: string[] = [];
  private daemons: NodeDaemon[] = [];
  readonly logger: Logger;
  private constructor(
    /** the directory (with `replicated`: its first provider, where the test's own writes go) */
    readonly slapd: PrivateSlapd,
    readonly directory: LdapBackupDirectory,
    readonly root: string,
    readonly prefix: string,
    /** with `replicated`: both providers */
    readonly pair: SlapdPair | undefined,
  ) {
    this.logger = pino({ level: process.env.STONEY_TEST_LOG ?? 'warn' });
  }

  /** `replicated`: the directory is a mirror-mode pair of providers (test/helpers/slapdPair.ts), used through both URLs. */
  static async start(opts: { replicated?: boolean } = {}): Promise<World> {
    await requireLibvirt();
    const pair = opts.replicated ? await startSlapdPair() : undefined;
    const slapd = pair ? pair.providers[0] : await startSlapd();
    const root = await mkdtemp(path.join('/var/tmp', 'stoney-e2e-'));
    for (const d of ['images', 'retain', 'backup', 'run']) await mkdir(path.join(root, d), { recursive: true });
    // The sample tree schedules every VM at 03:00 UTC through the global ou=backup: a control daemon of a
    // test running across that minute would back up every VM of the world (the sample's and the test's own).
    // Schedules in e2e worlds are explicit: only a VM's own `cron` counts.
    await ldapModify(slapd, `dn: ou=backup,ou=configuration,${SERVICE}\nchangetype: modify\nreplace: sstCronActive\nsstCronActive: FALSE\n`);
    const directory = await connectDirectory(connectionOf(slapd, pair));
    const prefix = `sbt${process.pid.toString(36)}${Math.floor(Math.random() * 1e4).toString(36)}`;
    return new World(slapd, directory, root, prefix, pair);
  }

  /** How a daemon of this world reaches the directory (both providers' URLs when replicated). */
  get connection(): DirectoryConnectionOptions {
    return connectionOf(this.slapd, this.pair);
  }

  get imageRoot(): string {
    return path.join(this.root, 'images');
  }
  get retainRoot(): string {
    return path.join(this.root, 'retain');
  }
  get backupRoot(): string {
    return path.join(this.root, 'backup');
  }
  /** Where a backup of a test VM (disks in STORAGE_POOL) lives: the layout the node steps compute. */
  layoutOf(vm: string, leaf: string): BackupLayout {
    return new BackupLayout({ rootDirectory: this.backupRoot, retainDirectory: this.retainRoot, vmType: 'vm-persistent', pool: STORAGE_POOL, vm, leaf });
  }
  get runDir(): string {
    return path.join(this.root, 'run');
  }
  get imageDir(): string {
    return path.join(this.imageRoot, 'vm-persistent', STORAGE_POOL);
  }
  nodeName = 'node-01.example.com';

  name(short: string): string {
    return `${this.prefix}-${short}`;
  }

  /** Settings every test VM gets on its own ou=backup (first level wins whole). */
  backupSettings(extra: string[] = []): string {
    const defaults: Record<string, string> = {
      sstBackupRootDirectory: `file://${this.backupRoot}`,
      sstBackupRetainDirectory: `file://${this.retainRoot}`,
      sstBackupNumberOfIterations: '1',
      sstVirtualizationDiskImageOwner: 'root',
      sstVirtualizationDiskImageGroup: 'vm-storage',
      sstVirtualizationDiskImagePermission: '640',
      sstVirtualizationDiskImageDirectoryOwner: 'root',
      sstVirtualizationDiskImageDirectoryGroup: 'vm-storage',
      sstVirtualizationDiskImageDirectoryPermission: '750',
    };
    for (const line of extra) {
      const [k, ...v] = line.split(': ');
      if (k) defaults[k] = v.join(': ');
    }
    return Object.entries(defaults).map(([k, v]) => `${k}: ${v}`).join('\n');
  }

  async addVm(short: string, o: WorldVmOptions): Promise<TinyVm> {
    const name = this.name(short);
    const targets = o.targets ?? ['vda'];
    let vm: TinyVm;
    if (o.noDomain) {
      vm = { name, xml: '', disks: targets.map((t) => ({ target: t, path: path.join(o.imageDir ?? this.imageDir, `${name}-${t}.qcow2`) })) };
    } else {
      vm = await createTinyVm({ name, imageDir: o.imageDir ?? this.imageDir, targets, running: o.running, initialPattern: o.pattern ?? 0xab, nic: o.nic ?? false, ...(o.memoryMiB ? { memoryMiB: o.memoryMiB } : {}), ...(o.sizeMiB ? { sizeMiB: o.sizeMiB } : {}), ...(o.ramLoader ? { ramLoader: o.ramLoader } : {}) });
      this.vms.push(name);
    }
    const dn = vmDn(name);
    const macs = o.nic && !o.noDomain ? await macsOf(name) : [];
    await ldapAdd(this.slapd, `${ldifText(
      vmEntryLines(dn, { name, node: o.node ?? this.nodeName, pool: POOL, memoryBytes: (o.memoryMiB ?? 32) * 1024 * 1024, status: o.running ? 'running' : 'shutoff' }),
      devicesEntryLines(dn),
      ...vm.disks.map((d) => diskEntryLines(dn, { target: d.target, sourceFile: d.path })),
      ...macs.map((mac, i) => interfaceEntryLines(dn, `net${i}`, mac)),
    )}
dn: ou=backup,${vmDn(name)}
objectClass: top
objectClass: organizationalUnit
objectClass: sstVirtualizationBackupObjectClass
${o.cron ? 'objectClass: sstCronObjectClass\n' + cronLines(o.cron) : ''}${o.method ? `objectClass: sstBackupSettingsExtension\nsstBackupSnapshotMethod: ${o.method}\n` : ''}ou: backup
${this.backupSettings(o.backupAttributes)}
`);
    return vm;
  }

  /** Roots the node daemons allow besides backup and retain (e.g. a RAM disk), as STONEY_ALLOWED_ROOTS would. */
  readonly extraAllowedRoots: string[] = [];

  /** `directory`: the node daemon's own session (e.g. bound as its node identity under the shipped ACL). */
  async startNodeDaemon(nodeName = this.nodeName, directory: LdapBackupDirectory = this.directory, opts: { feed?: 'poll' | 'sync' } = {}): Promise<NodeDaemon> {
    // Tests poll (simple, fast enough); the bench takes production's push feed, whose latency is part of a backup's wall time.
    const feed = opts.feed === 'sync'
      ? createChangeFeed('sync', { ...this.connection, scope: { node: nodeName }, stateFile: path.join(this.root, `feed-${nodeName}.json`), logger: this.logger }, directory)
      : new PollingChangeFeed(directory, { node: nodeName }, { intervalMs: 150, logger: this.logger });
    const daemon = new NodeDaemon(this.nodeDaemonOptions(feed, directory, nodeName));
    await daemon.start();
    this.daemons.push(daemon);
    return daemon;
  }

  /** What a node daemon of this world runs with; a test may pass its own feed and directory (window). */
  nodeDaemonOptions(feed: ChangeFeed, directory: BackupDirectory = this.directory, nodeName = this.nodeName): NodeDaemonOptions {
    return {
      nodeName,
      directory,
      feed,
      virsh: new Virsh(LIBVIRT_URI, this.logger),
      qemuImg: new QemuImg(this.logger),
      imageRoots: [this.imageRoot],
      allowedRoots: [this.backupRoot, this.retainRoot, ...this.extraAllowedRoots],
      logger: this.logger,
      runDir: this.runDir,
    };
  }

  async stopNodeDaemons(): Promise<void> {
    for (const d of this.daemons.splice(0)) await d.stop();
  }

  async leaf(vm: string, leaf: string): Promise<LeafEntry> {
    const l = (await this.directory.listLeaves(vm)).find((x) => x.leaf === leaf);
    if (!l) throw new Error(`no leaf ${leaf} for ${vm}`);
    return l;
  }

  /** Poll until `check` holds (or fail after the timeout). */
  async waitFor(check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('condition not reached in time');
  }

  /** Wait until the leaf reaches one of `modes` (or time out with what it shows). */
  async waitForMode(vm: string, leaf: string, modes: string[], timeoutMs = 60_000, pollMs = 100): Promise<LeafEntry> {
    const end = Date.now() + timeoutMs;
    let last: LeafEntry | undefined;
    while (Date.now() < end) {
      last = (await this.directory.listLeaves(vm)).find((x) => x.leaf === leaf);
      if (last && modes.includes(last.mode)) return last;
      await new Promise((r) => setTimeout(r, pollMs));
    }
    throw new Error(`leaf ${vm}/${leaf} did not reach ${modes.join('|')}; last ${JSON.stringify(last)}`);
  }

  /** Remember a VM made by the code under test (restore as new) so cleanup removes it. */
  track(vm: string): void {
    this.vms.push(vm);
  }

  /** One backup of `vm` driven like the control side; fails the test unless it finished with 0. */
  async backupOk(vm: string, leaf: string): Promise<LeafEntry> {
    const done = await this.finishBackup(vm, leaf);
    if (done.mode !== 'finished' || done.returnValue !== 0) throw new Error(`backup ${leaf} of ${vm} ended ${done.mode} with ${done.returnValue}`);
    return done;
  }

  /** Drive the backup `leaf` of `vm` (new, or where a test left it) like the control side; the leaf as it ended. */
  async finishBackup(vm: string, leaf: string): Promise<LeafEntry> {
    const [done] = await runBackupBatch({ directory: this.directory, vms: [(await this.directory.getVm(vm))!], leaf, policy: { ...defaultBatchPolicy, claimTimeoutMs: 60_000 }, logger: this.logger });
    if (!done) throw new Error(`backup ${leaf} of ${vm}: the batch returned no leaf`);
    return done;
  }

  /** Create the leaf and issue `snapshot` on it as the control side does; the test drives the rest. Returns its DN. */
  async startSnapshot(vm: string, leaf: string): Promise<string> {
    if (!(await this.directory.createLeaf(vm, leaf))) throw new Error(`leaf ${leaf} of ${vm} exists already`);
    const dn = (await this.leaf(vm, leaf)).dn;
    if (!(await this.directory.casMode(dn, 'initialize', 'initialized'))) throw new Error(`leaf ${leaf} of ${vm} is not at initialize`);
    if (!(await this.directory.casMode(dn, 'initialized', 'snapshot', { state: '0' }))) throw new Error(`leaf ${leaf} of ${vm} is not at initialized`);
    return dn;
  }

  /** Files below the world's roots that only an unfinished step leaves: live overlays, partial copies, private state directories. */
  async stepLeftovers(): Promise<string[]> {
    const out = (await run('find', [this.root, '-name', '*.overlay', '-o', '-name', '*.partial', '-o', '-name', '.stoney-state-*'])).stdout.trim();
    return out === '' ? [] : out.split('\n');
  }

  /** Environment for the real CLI (`node bin/stoney-backup.js …`) against this world. */
  cliEnv(): Record<string, string> {
    return {
      STONEY_LDAP_URL: this.slapd.url, STONEY_LDAP_BIND_DN: this.slapd.bindDn, STONEY_LDAP_PASSWORD_FILE: this.slapd.passwordFile,
      STONEY_LDAP_BASE_DN: this.slapd.baseDn, STONEY_LIBVIRT_URI: this.libvirtUri, STONEY_IMAGE_ROOTS: this.imageRoot,
      STONEY_ALLOWED_ROOTS: `${this.backupRoot}:${this.retainRoot}`,
    };
  }

  /** Every part is removed even when one fails (libvirtd briefly away, say); the first failure is thrown at the end. */
  async cleanup(): Promise<void> {
    const failures: unknown[] = [];
    const attempt = async (f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (err) {
        failures.push(err);
      }
    };
    await attempt(() => this.stopNodeDaemons());
    for (const vm of this.vms) await attempt(() => removeVm(vm));
    await attempt(() => this.directory.close());
    await attempt(() => (this.pair ? this.pair.stop() : this.slapd.stop()));
    await attempt(() => rm(this.root, { recursive: true, force: true }));
    if (failures.length > 0) throw failures[0];
  }

  /** Replace one attribute of the VM's ou=backup entry (a project attribute needs addVm's `method`, which adds its class). */
  async setBackupAttribute(vm: string, attribute: string, value: string): Promise<void> {
    await ldapModify(this.slapd, `dn: ou=backup,${vmDn(vm)}\nchangetype: modify\nreplace: ${attribute}\n${attribute}: ${value}\n`);
  }

  get libvirtUri(): string {
    return LIBVIRT_URI;
  }
}
