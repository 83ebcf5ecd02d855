import { AlreadyExistsError, Attribute, TypeOrValueExistsError, Change, ConstraintViolationError, NoSuchAttributeError, NoSuchObjectError } from 'ldapts';
import type { LeaseView } from '../control/leaseDecision.js';
import { DirectoryError } from './DirectoryError.js';
import type { LdapSession } from './LdapSession.js';
import { ditPaths } from './ditPaths.js';
import { parseGeneralizedTime, toAttributes } from './entryMapping.js';
import type { Attributes } from '../domain/settings.js';

export const LEASE_CLASS = 'sstBackupLease';
const HOLDER = 'sstBackupLeaseHolder';

/**
 * The control daemons' lease in the directory, next to the global backup
 * settings: `cn=control-lease,ou=backup,ou=configuration,<service>` holds the
 * active daemon's token in sstBackupLeaseHolder; `cn=control-clock` beside it
 * is written by every standby to learn the server's time.
 *
 * Why a clock entry: LDAP has no "server now" a client can read everywhere
 * (cn=Monitor is optional), but every write stamps the entry with the
 * server's time (entryCSN, microseconds; modifyTimestamp, seconds, as the
 * fallback). A standby writes the clock entry and then reads both entries in
 * one search: the clock's stamp is a server time no later than that read, the
 * lease's stamp the server time of the holder's last renewal. The lease's own
 * stamp must not be touched by standbys, hence a second entry. With
 * multi-provider replication the stamps come from the provider that took the
 * write; OpenLDAP requires the providers' clocks to be synchronised anyway.
 *
 * Every change of the holder is one modify that deletes the value seen and
 * adds the new one: if anybody changed it meanwhile, the server refuses the
 * whole modify (noSuchAttribute), so two contenders can never both win.
 */
export class LdapLeaseStore {
  readonly leaseDn: string;
  readonly clockDn: string;
  private readonly containerDn: string;
  private readonly configurationDn: string;

  constructor(private readonly session: LdapSession, baseDn: string) {
    const paths = ditPaths(baseDn);
    this.containerDn = paths.globalBackupDn;
    this.configurationDn = `ou=configuration,${paths.serviceDn}`;
    this.leaseDn = `cn=control-lease,${this.containerDn}`;
    this.clockDn = `cn=control-clock,${this.containerDn}`;
  }

  /** Write the clock entry (as `who`), then read the lease with a server time no later than the read. */
  async look(who: string): Promise<LeaseView> {
    await this.touchClock(who);
    let entries;
    try {
      entries = await this.session.search(this.containerDn, {
        scope: 'one',
        filter: `(objectClass=${LEASE_CLASS})`,
        attributes: ['cn', HOLDER, 'entryCSN', 'modifyTimestamp'],
      });
    } catch (err) {
      throw leaseError(err, `search ${this.containerDn}`, false);
    }
    const all = entries.map(toAttributes);
    const byCn = (cn: string) => all.find((a) => a['cn']?.some((v) => v.toLowerCase() === cn));
    const lease = byCn('control-lease');
    const clock = byCn('control-clock');
    return {
      exists: lease !== undefined,
      holder: lease?.[HOLDER.toLowerCase()]?.[0],
      writtenAt: lease ? writeTime(lease) : undefined,
      serverNow: clock ? writeTime(clock) : undefined,
    };
  }

  /** Add the lease entry holding `token`; false when it exists already (someone else created it first). */
  async create(token: string): Promise<boolean> {
    try {
      await this.addCreatingParents(this.leaseDn, { objectClass: ['top', LEASE_CLASS], cn: 'control-lease', [HOLDER]: token });
      return true;
    } catch (err) {
      if (err instanceof AlreadyExistsError) return false;
      throw leaseError(err, `add ${this.leaseDn}`, true);
    }
  }

  /**
   * Compare-and-swap of the holder in one modify: delete `expected` (none:
   * the lease must be free), add `next` (none: release). False when the
   * holder was not `expected` any more.
   */
  async swap(expected: string | undefined, next: string | undefined): Promise<boolean> {
    const changes: Change[] = [];
    if (expected !== undefined) changes.push(new Change({ operation: 'delete', modification: new Attribute({ type: HOLDER, values: [expected] }) }));
    if (next !== undefined) changes.push(new Change({ operation: 'add', modification: new Attribute({ type: HOLDER, values: [next] }) }));
    if (changes.length === 0) return true;
    try {
      await this.session.modify(this.leaseDn, changes);
      return true;
    } catch (err) {
      // noSuchAttribute: the value seen is gone; attributeOrValueExists / constraintViolation (single-valued):
      // a holder appeared on a lease seen free; noSuchObject: the entry was removed.
      if (err instanceof NoSuchAttributeError || err instanceof TypeOrValueExistsError || err instanceof ConstraintViolationError || err instanceof NoSuchObjectError) return false;
      throw leaseError(err, `compare-and-swap of the control lease ${this.leaseDn}`, true);
    }
  }

  private async touchClock(who: string): Promise<void> {
    try {
      await this.session.modify(this.clockDn, [new Change({ operation: 'replace', modification: new Attribute({ type: 'description', values: [`clock probe of ${who}`] }) })]);
    } catch (err) {
      if (!(err instanceof NoSuchObjectError)) throw leaseError(err, `modify ${this.clockDn}`, true);
      try {
        await this.addCreatingParents(this.clockDn, { objectClass: ['top', LEASE_CLASS], cn: 'control-clock', description: `clock probe of ${who}` });
      } catch (e) {
        if (!(e instanceof AlreadyExistsError)) throw leaseError(e, `add ${this.clockDn}`, true);
      }
    }
  }

  /** A site without global backup settings gets plain containers for the lease (the settings lookup ignores them). */
  private async addCreatingParents(dn: string, attributes: Record<string, string | string[]>): Promise<void> {
    try {
      await this.session.add(dn, attributes);
      return;
    } catch (err) {
      if (!(err instanceof NoSuchObjectError)) throw err;
    }
    for (const [parent, ou] of [[this.configurationDn, 'configuration'], [this.containerDn, 'backup']] as const) {
      try {
        await this.session.add(parent, { objectClass: ['top', 'organizationalUnit'], ou });
      } catch (err) {
        if (!(err instanceof AlreadyExistsError)) throw err;
      }
    }
    await this.session.add(dn, attributes);
  }
}

/** The directory's answer, with what to do about the faults a site must fix (they are not retried: DirectoryError.retryable). */
function leaseError(err: unknown, what: string, write: boolean): DirectoryError {
  const e = DirectoryError.from(err, what, write);
  const hint = e.ldapCode === 17 || e.ldapCode === 21 || e.ldapCode === 65
    ? 'the directory lacks the sstBackupLease class or sstBackupLeaseHolder attribute: load the current ldif/stoney-backup-schema.ldif'
    : e.ldapCode === 50
      ? 'the control identity may not write cn=control-lease and cn=control-clock below the global backup settings: see ldif/acl-example.ldif'
      : undefined;
  return hint === undefined ? e : new DirectoryError(`${e.message}; ${hint}`, e.code, e.ldapCode, { retryable: e.retryable, cause: err });
}

/** The server time of an entry's last write: entryCSN (µs) when readable, else modifyTimestamp (s). */
function writeTime(a: Attributes): Date | undefined {
  const csn = a['entrycsn']?.[0];
  return (csn === undefined ? undefined : parseGeneralizedTime(csn.split('#')[0])) ?? parseGeneralizedTime(a['modifytimestamp']?.[0]);
}
