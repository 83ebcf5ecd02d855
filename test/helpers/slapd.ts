/**
 * A private OpenLDAP slapd for tests: own temp dir, own cn=config from
 * ldif/config.ldif (the original stoney cloud schema the project uses plus
 * the project's extension), the sample tree, listening on a free loopback port. Never uses or touches a system slapd. If slapd
 * cannot start, startSlapd throws with slapd's stderr: tests fail, never skip.
 */
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import net from 'node:net';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { execa, type ResultPromise } from 'execa';
import { Client } from 'ldapts';

export const SLAPD = '/usr/sbin/slapd';
export const SLAPADD = '/usr/sbin/slapadd';
export const STOCK_SCHEMA_DIR = '/etc/ldap/schema';
/** The checkout: where package.json is, whether this runs from test/helpers or compiled from dist/test/helpers. */
export const PROJECT_ROOT = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
})();
export const LDIF_DIR = path.join(PROJECT_ROOT, 'ldif');
export const SAMPLE_BASE_DN = 'o=stepping-stone,c=ch';

export interface StartSlapdOptions {
  /** Extra LDIF files (content records, parent first) loaded after the sample tree. */
  ldifFiles?: string[];
  /** Load ldif/sample-tree.ldif (default true). Without it only the suffix entry exists. */
  sampleTree?: boolean;
  /**
   * Leave the project's extension (ldif/stoney-backup-schema.ldif) out of
   * cn=config: a directory of an existing installation, which holds only the
   * original schema. ldapAddConfig loads the extension into it later.
   */
  withoutExtension?: boolean;
  /** No entry at all, not even the suffix: a replica that syncrepl fills from its peer. */
  emptyDatabase?: boolean;
  /** Listen on this loopback port (default: a free one); a replicating pair must know both in advance. */
  port?: number;
  /** The rootdn password (default: random); replicating peers bind to each other with it. */
  password?: string;
  /** Changes the rendered cn=config before slapadd (e.g. serverID and syncrepl, see slapdPair.ts). */
  editConfig?: (ldif: string) => string;
  /** serverID of this slapd: the entryCSNs slapadd writes carry it (replication). */
  serverId?: number;
}

/** The line of ldif/config.ldif that includes the project's extension. */
export const EXTENSION_INCLUDE = 'include: file://@LDIFDIR@/stoney-backup-schema.ldif';

export interface PrivateSlapd {
  url: string;
  port: number;
  baseDn: string;
  bindDn: string;
  /** rootdn of cn=config (same password): for ldapModifyConfig. */
  configBindDn: string;
  password: string;
  /** A file with the password (no trailing newline; `ldapsearch -y` reads it verbatim). */
  passwordFile: string;
  /** The temp dir holding everything. */
  dir: string;
  confDir: string;
  dataDir: string;
  /** PID of the running slapd, undefined while it is down. */
  readonly pid: number | undefined;
  /** Kill slapd and remove the temp dir. */
  stop(): Promise<void>;
  /** Stop and start again on the same port, keeping the data. */
  restart(): Promise<void>;
  /** Stop slapd only (the data stays); start() brings it back on the same port. */
  halt(): Promise<void>;
  /** SIGKILL slapd (a crash: no goodbye to its clients; the data stays); start() brings it back. */
  kill(): Promise<void>;
  start(): Promise<void>;
}

/** Children still running when the test process exits get SIGKILL: no stray slapd. */
const running = new Set<ResultPromise>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export function renderConfig(template: string, vars: Record<string, string>): string {
  return template.replace(/@([A-Z]+)@/g, (whole, name: string) => vars[name] ?? whole);
}

async function slapadd(args: string[]): Promise<void> {
  const r = await execa(SLAPADD, args, { reject: false, all: true });
  if (r.exitCode !== 0) throw new Error(`slapadd ${args.join(' ')} failed (exit ${r.exitCode}):\n${r.all}`);
}

async function answers(url: string, bindDn: string, password: string): Promise<boolean> {
  const client = new Client({ url, connectTimeout: 500, timeout: 1000 });
  try {
    await client.bind(bindDn, password);
    return true;
  } catch {
    return false;
  } finally {
    await client.unbind().catch(() => undefined);
  }
}

export async function startSlapd(opts: StartSlapdOptions = {}): Promise<PrivateSlapd> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'stoney-slapd-'));
  const confDir = path.join(dir, 'slapd.d');
  const dataDir = path.join(dir, 'data');
  await mkdir(confDir, { recursive: true, mode: 0o700 });
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const baseDn = SAMPLE_BASE_DN;
  const bindDn = `cn=admin,${baseDn}`;
  const password = opts.password ?? randomBytes(12).toString('hex');
  const passwordFile = path.join(dir, 'rootpw');
  await writeFile(passwordFile, password, { mode: 0o600 });

  try {
    const fullTemplate = await readFile(path.join(LDIF_DIR, 'config.ldif'), 'utf8');
    if (!fullTemplate.includes(EXTENSION_INCLUDE)) throw new Error(`ldif/config.ldif has no line ${EXTENSION_INCLUDE}`);
    const template = opts.withoutExtension ? fullTemplate.replace(EXTENSION_INCLUDE, '') : fullTemplate;
    const config = renderConfig(template, {
      DBDIR: dataDir,
      SUFFIX: baseDn,
      ROOTDN: bindDn,
      ROOTPW: password,
      PIDFILE: path.join(dir, 'slapd.pid'),
      ARGSFILE: path.join(dir, 'slapd.args'),
      SCHEMADIR: STOCK_SCHEMA_DIR,
      LDIFDIR: LDIF_DIR,
    });
    const configFile = path.join(dir, 'config.ldif');
    await writeFile(configFile, opts.editConfig ? opts.editConfig(config) : config, { mode: 0o600 });
    await slapadd(['-n0', '-F', confDir, '-l', configFile]);

    const dataFiles: string[] = [];
    if (opts.emptyDatabase) {
      // nothing: the entries come by replication
    } else if (opts.sampleTree ?? true) {
      dataFiles.push(path.join(LDIF_DIR, 'sample-tree.ldif'));
    } else {
      const suffixFile = path.join(dir, 'suffix.ldif');
      await writeFile(suffixFile, `dn: ${baseDn}\nobjectClass: top\nobjectClass: organization\no: stepping-stone\n`);
      dataFiles.push(suffixFile);
    }
    dataFiles.push(...(opts.ldifFiles ?? []));
    const sid = opts.serverId !== undefined ? ['-S', String(opts.serverId)] : [];
    for (const f of dataFiles) await slapadd(['-F', confDir, ...sid, '-b', baseDn, '-l', f]);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  let port = opts.port ?? (await freePort());
  let url = `ldap://127.0.0.1:${port}/`;
  let child: ResultPromise | undefined;
  let stderr = '';

  const launch = async (): Promise<void> => {
    stderr = '';
    const c = execa(SLAPD, ['-F', confDir, '-h', url, '-d', 'none'], {
      reject: false,
      stdin: 'ignore',
      stdout: 'ignore',
      stderr: 'pipe',
      buffer: false,
      cleanup: true,
    });
    child = c;
    running.add(c);
    c.stderr?.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString('utf8')).slice(-20_000);
    });
    let exited = false;
    void c.then(() => {
      exited = true;
      running.delete(c);
    });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (exited) break;
      if (await answers(url, bindDn, password)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (!exited) {
      c.kill('SIGKILL');
      await c;
    }
    child = undefined;
    throw new Error(`private slapd on ${url} did not come up within 10 s (${exited ? `exit ${c.exitCode ?? c.signalCode}` : 'killed'}); stderr:\n${stderr}`);
  };

  const halt = async (): Promise<void> => {
    const c = child;
    if (!c) return;
    child = undefined;
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), 5_000);
    await c;
    clearTimeout(timer);
    running.delete(c);
  };

  try {
    // A port picked free can be taken before slapd binds it: try a few.
    for (let attempt = 1; ; attempt++) {
      try {
        await launch();
        break;
      } catch (err) {
        if (attempt >= 3 || opts.port !== undefined || !/Address already in use/.test(stderr)) throw err;
        port = await freePort();
        url = `ldap://127.0.0.1:${port}/`;
      }
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  const handle: PrivateSlapd = {
    get url() {
      return url;
    },
    get port() {
      return port;
    },
    baseDn,
    bindDn,
    configBindDn: 'cn=admin,cn=config',
    password,
    passwordFile,
    dir,
    confDir,
    dataDir,
    get pid() {
      return child?.pid;
    },
    async stop() {
      await halt();
      await rm(dir, { recursive: true, force: true });
    },
    async restart() {
      await halt();
      await launch();
    },
    halt,
    async kill() {
      const c = child;
      if (!c) return;
      child = undefined;
      c.kill('SIGKILL');
      await c;
      running.delete(c);
    },
    async start() {
      if (!child) await launch();
    },
  };
  return handle;
}

export function ldapToolArgs(slapd: PrivateSlapd, bindDn = slapd.bindDn): string[] {
  return ['-x', '-H', slapd.url, '-D', bindDn, '-y', slapd.passwordFile];
}

async function ldapTool(tool: string, args: string[], input: string): Promise<string> {
  const r = await execa(tool, args, { input, reject: false, all: true });
  if (r.exitCode !== 0) throw new Error(`${tool} failed (exit ${r.exitCode}):\n${r.all}\n--- input ---\n${input}`);
  return r.all ?? '';
}

/** ldapadd the given LDIF (content records) as the rootdn. */
export async function ldapAdd(slapd: PrivateSlapd, ldif: string): Promise<string> {
  return ldapTool('/usr/bin/ldapadd', ldapToolArgs(slapd), ldif);
}

/** ldapmodify the given LDIF (change records: changetype add/modify/delete …) as the rootdn. */
export async function ldapModify(slapd: PrivateSlapd, ldif: string): Promise<string> {
  return ldapTool('/usr/bin/ldapmodify', ldapToolArgs(slapd), ldif);
}

/** ldapmodify against cn=config as its rootdn (e.g. ldif/acl-example.ldif, olcIdleTimeout). */
export async function ldapModifyConfig(slapd: PrivateSlapd, ldif: string): Promise<string> {
  return ldapTool('/usr/bin/ldapmodify', ldapToolArgs(slapd, slapd.configBindDn), ldif);
}

/** ldapadd content records to cn=config as its rootdn (e.g. a schema file into the running slapd). */
export async function ldapAddConfig(slapd: PrivateSlapd, ldif: string): Promise<string> {
  return ldapTool('/usr/bin/ldapadd', ldapToolArgs(slapd, slapd.configBindDn), ldif);
}

/** ldapsearch as the rootdn; returns LDIF (-LLL, no folding). */
export async function ldapSearch(slapd: PrivateSlapd, base: string, filter = '(objectClass=*)', attrs: string[] = [], scope = 'sub'): Promise<string> {
  const r = await execa('/usr/bin/ldapsearch', [...ldapToolArgs(slapd), '-LLL', '-o', 'ldif-wrap=no', '-s', scope, '-b', base, filter, ...attrs], {
    reject: false,
    all: true,
  });
  if (r.exitCode !== 0 && r.exitCode !== 32) throw new Error(`ldapsearch failed (exit ${r.exitCode}):\n${r.all}`);
  return r.exitCode === 32 ? '' : (r.stdout ?? '');
}
