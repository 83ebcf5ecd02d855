/**
 * OpenLDAP sync cookies: `rid=000[,sid=001],csn=<CSN>[;<CSN>…][,delcsn=<CSN>]`,
 * a CSN being `YYYYmmddHHMMSS.ffffffZ#count#sid#mod`. RFC 4533 calls cookies
 * opaque, but OpenLDAP silently answers a cookie it cannot parse with the
 * whole content and a refreshDelete ending, which a consumer cannot tell
 * from a resumed refresh. So the feed checks cookies itself, and uses the
 * CSNs to notice when a server sends unchanged entries (a full reload).
 */
export interface SyncCookieInfo {
  /** newest CSN per server id (the `sid` field of each CSN, lower-case hex) */
  csnBySid: Map<string, string>;
}

const CSN = /^\d{14}\.\d{6}Z#[0-9a-f]{6}#[0-9a-f]{3}#[0-9a-f]{6}$/i;
const KNOWN_KEYS = new Set(['rid', 'sid', 'csn', 'delcsn']);

/** The server id of a CSN, or undefined if it is not one. */
export function csnSid(csn: string): string | undefined {
  return CSN.test(csn) ? csn.split('#')[2]?.toLowerCase() : undefined;
}

/** The CSNs of a well-formed OpenLDAP cookie; undefined for anything else (garbage, another server's format). */
export function parseSyncCookie(cookie: Buffer | undefined): SyncCookieInfo | undefined {
  if (!cookie || cookie.length === 0 || cookie.length > 4096) return undefined;
  const text = cookie.toString('latin1');
  if (!/^[\x20-\x7e]+$/.test(text)) return undefined;
  const csnBySid = new Map<string, string>();
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) return undefined;
    const key = part.slice(0, eq).toLowerCase();
    const value = part.slice(eq + 1);
    if (!KNOWN_KEYS.has(key)) return undefined;
    if (key === 'rid' && !/^\d{1,3}$/.test(value)) return undefined;
    if (key === 'sid' && !/^[0-9a-f]{1,3}$/i.test(value)) return undefined;
    if (key === 'csn' || key === 'delcsn') {
      for (const csn of value.split(';')) {
        const sid = csnSid(csn);
        if (sid === undefined) return undefined;
        if (key === 'csn') {
          const seen = csnBySid.get(sid);
          if (seen === undefined || csn > seen) csnBySid.set(sid, csn);
        }
      }
    }
  }
  return csnBySid.size > 0 ? { csnBySid } : undefined;
}
