import { Ber, BerWriter, Control } from 'ldapts';

/** RFC 4533 OIDs (OpenLDAP's arc 1.3.6.1.4.1.4203.1.9.1). */
export const SyncOid = {
  request: '1.3.6.1.4.1.4203.1.9.1.1',
  state: '1.3.6.1.4.1.4203.1.9.1.2',
  done: '1.3.6.1.4.1.4203.1.9.1.3',
  info: '1.3.6.1.4.1.4203.1.9.1.4',
} as const;

export type SyncRequestMode = 'refreshOnly' | 'refreshAndPersist';

/**
 * The Sync Request control (RFC 4533 §2.2): asks the server for the content
 * of a search and, with refreshAndPersist, to keep the search open and send
 * every later change. ldapts lets request controls be added by subclassing
 * Control; only the value has to be written.
 *
 *   syncRequestValue ::= SEQUENCE {
 *     mode ENUMERATED { refreshOnly (1), refreshAndPersist (3) },
 *     cookie syncCookie OPTIONAL,
 *     reloadHint BOOLEAN DEFAULT FALSE }
 */
export class SyncRequestControl extends Control {
  constructor(
    readonly mode: SyncRequestMode,
    readonly cookie: Buffer | undefined,
    readonly reloadHint = false,
  ) {
    // Critical: a server without syncprov must refuse the search, not run it as a plain one-shot search.
    super(SyncOid.request, { critical: true });
  }

  protected override writeControl(writer: BerWriter): void {
    const value = new BerWriter();
    value.startSequence();
    value.writeEnumeration(this.mode === 'refreshOnly' ? 1 : 3);
    if (this.cookie && this.cookie.length > 0) value.writeBuffer(this.cookie, Ber.OctetString);
    if (this.reloadHint) value.writeBoolean(true);
    value.endSequence();
    writer.writeBuffer(value.buffer, Ber.OctetString);
  }
}
