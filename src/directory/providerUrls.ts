/**
 * The directory as one server or as several providers replicating each other
 * (OpenLDAP multi-provider / mirror mode). Every session and change feed
 * tries them in this order and moves on to the next one when it loses the
 * current one.
 */
export interface ProviderUrlOptions {
  /** ldap://host:port or ldaps://host:port: the (first) provider */
  url: string;
  /** All providers in the order to try them (includes `url`); absent: `url` alone. */
  urls?: readonly string[];
}

export function providerUrls(o: ProviderUrlOptions): string[] {
  return o.urls !== undefined && o.urls.length > 0 ? [...o.urls] : [o.url];
}

/** STONEY_LDAP_URL: one URL, or several separated by spaces or commas (as slapd's own -h list). */
export function parseUrlList(text: string): string[] {
  return text.split(/[\s,]+/).filter((u) => u !== '');
}
