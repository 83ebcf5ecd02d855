/**
 * A parser for the small subset of XML that libvirt writes (elements,
 * attributes in quotes, text, the five named entities and character
 * references) and nothing else. A domain definition read from a backup is
 * input from whoever could write that file: a DTD, an entity declaration, a
 * comment, CDATA or a processing instruction could make libvirt's parser
 * (libxml2) see something other than what we checked, so any of them is
 * refused instead of being interpreted. What we check is then serialized
 * again from the tree, so libvirt defines exactly what passed the check.
 */
export interface XmlElement {
  name: string;
  attrs: [string, string][];
  children: XmlNode[];
}
export type XmlNode = XmlElement | string;

export class XmlSubsetError extends Error {
  override name = 'XmlSubsetError';
}

const NAME = /[A-Za-z_][A-Za-z0-9._:-]*/y;
const SPACE = /[ \t\r\n]*/y;

function decode(raw: string, where: number): string {
  return raw.replace(/&([^;&]*);?/g, (whole, ref: string) => {
    if (!whole.endsWith(';')) throw new XmlSubsetError(`bare '&' at offset ${where}`);
    const named: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };
    const n = named[ref];
    if (n !== undefined) return n;
    const m = /^#(?:x([0-9A-Fa-f]{1,6})|([0-9]{1,7}))$/.exec(ref);
    if (!m) throw new XmlSubsetError(`entity &${ref}; is not allowed (offset ${where})`);
    const cp = m[1] !== undefined ? parseInt(m[1], 16) : Number(m[2]);
    if (cp === 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new XmlSubsetError(`invalid character reference &${ref}; (offset ${where})`);
    return String.fromCodePoint(cp);
  });
}

/** Parses one document of the subset; throws XmlSubsetError on anything else. */
export function parseStrictXml(text: string): XmlElement {
  // A leading XML declaration carries no content; anything else starting with <? or <! is refused below.
  let i = /^\uFEFF?[ \t\r\n]*(?:<\?xml[ \t][^?<>]*\?>)?/.exec(text)?.[0].length ?? 0;
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  const expect = (re: RegExp): string | undefined => {
    re.lastIndex = i;
    const m = re.exec(text);
    if (!m) return undefined;
    i = re.lastIndex;
    return m[0];
  };
  while (i < text.length) {
    const lt = text.indexOf('<', i);
    const chunk = text.slice(i, lt < 0 ? text.length : lt);
    if (chunk.length) {
      if (chunk.includes(']]>')) throw new XmlSubsetError(`']]>' in text at offset ${i}`);
      const top = stack[stack.length - 1];
      if (!top) {
        if (/[^ \t\r\n]/.test(chunk)) throw new XmlSubsetError(`text outside the root element at offset ${i}`);
      } else {
        top.children.push(decode(chunk, i));
      }
    }
    if (lt < 0) break;
    i = lt + 1;
    const c = text[i];
    if (c === '!' || c === '?') throw new XmlSubsetError(`'<${c}' (comment, CDATA, DTD or processing instruction) at offset ${lt} is not allowed`);
    if (c === '/') {
      i += 1;
      const name = expect(NAME);
      expect(SPACE);
      if (name === undefined || text[i] !== '>') throw new XmlSubsetError(`malformed end tag at offset ${lt}`);
      i += 1;
      const open = stack.pop();
      if (!open || open.name !== name) throw new XmlSubsetError(`</${name}> at offset ${lt} does not close <${open?.name ?? '(nothing)'}>`);
      continue;
    }
    const name = expect(NAME);
    if (name === undefined) throw new XmlSubsetError(`malformed start tag at offset ${lt}`);
    if (root && stack.length === 0) throw new XmlSubsetError(`a second root element <${name}> at offset ${lt}`);
    const el: XmlElement = { name, attrs: [], children: [] };
    for (;;) {
      const sp = expect(SPACE) ?? '';
      if (text.startsWith('/>', i)) {
        i += 2;
        break;
      }
      if (text[i] === '>') {
        i += 1;
        stack.push(el);
        break;
      }
      if (!sp.length) throw new XmlSubsetError(`malformed attribute in <${name}> at offset ${i}`);
      const an = expect(NAME);
      if (an === undefined) throw new XmlSubsetError(`malformed attribute in <${name}> at offset ${i}`);
      expect(SPACE);
      if (text[i] !== '=') throw new XmlSubsetError(`attribute ${an} of <${name}> has no value`);
      i += 1;
      expect(SPACE);
      const q = text[i];
      if (q !== "'" && q !== '"') throw new XmlSubsetError(`attribute ${an} of <${name}> is not quoted`);
      const end = text.indexOf(q, i + 1);
      if (end < 0) throw new XmlSubsetError(`unterminated attribute ${an} of <${name}>`);
      const raw = text.slice(i + 1, end);
      if (raw.includes('<')) throw new XmlSubsetError(`'<' in attribute ${an} of <${name}>`);
      if (el.attrs.some(([k]) => k === an)) throw new XmlSubsetError(`duplicate attribute ${an} in <${name}>`);
      el.attrs.push([an, decode(raw, i)]);
      i = end + 1;
    }
    const parent = stack[stack.length - (stack[stack.length - 1] === el ? 2 : 1)];
    if (parent) parent.children.push(el);
    else root = el;
  }
  if (stack.length) throw new XmlSubsetError(`<${stack[stack.length - 1]?.name}> is not closed`);
  if (!root) throw new XmlSubsetError('no root element');
  return root;
}

function escape(s: string, attr: boolean): string {
  const t = s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return attr ? t.replace(/'/g, '&apos;') : t;
}

/** Serializes a tree (libvirt's style: single-quoted attributes, empty elements self-closed). */
export function serializeXml(node: XmlNode): string {
  if (typeof node === 'string') return escape(node, false);
  const attrs = node.attrs.map(([k, v]) => ` ${k}='${escape(v, true)}'`).join('');
  if (node.children.length === 0) return `<${node.name}${attrs}/>`;
  return `<${node.name}${attrs}>${node.children.map(serializeXml).join('')}</${node.name}>`;
}

/** The element's form for comparing: whitespace-only text dropped, attributes sorted. */
export function canonicalXml(node: XmlNode): string {
  if (typeof node === 'string') return escape(node, false);
  const attrs = [...node.attrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => ` ${k}='${escape(v, true)}'`).join('');
  const kids = node.children.filter((c) => typeof c !== 'string' || /[^ \t\r\n]/.test(c)).map(canonicalXml).join('');
  return `<${node.name}${attrs}>${kids}</${node.name}>`;
}

export function attr(el: XmlElement, name: string): string | undefined {
  return el.attrs.find(([k]) => k === name)?.[1];
}

export function childElements(el: XmlElement): XmlElement[] {
  return el.children.filter((c): c is XmlElement => typeof c !== 'string');
}

/** The element's text content (its string children joined). */
export function textOf(el: XmlElement): string {
  return el.children.filter((c): c is string => typeof c === 'string').join('');
}
