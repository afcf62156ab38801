/**
 * HTML escaping for the audit view, in one place: every page is built with the `html` tag, which
 * escapes each interpolated value unless it is already Html (built by this same tag). Text from
 * the audit (user names, statements, tickets) is attacker-chosen; nothing reaches a page unescaped.
 * What the pages say is pages.ts's.
 */

/** Markup this module built (or a fixed literal); the only kind `html` inserts unescaped. */
export class Html {
  private constructor(readonly text: string) {}
  /** Only for the tag below and for `join`: anything else goes through escapeHtml. */
  static trusted(text: string): Html {
    return new Html(text);
  }
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Readonly<Record<string, string>> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/**
 * Text as HTML text or attribute value (quoted with "): the five characters that can end a text
 * node, a tag or an attribute are escaped; control characters (other than tab and newline) and
 * the bidirectional overrides show as \uXXXX so a statement cannot hide or reorder what is shown.
 */
export function escapeHtml(text: string): string {
  return text.replace(
    // eslint-disable-next-line no-control-regex
    /[&<>"']|[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (ch) => ESCAPES[ch] ?? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

export type HtmlValue = Html | string | number | boolean | null | undefined | readonly HtmlValue[];

function render(v: HtmlValue): string {
  if (v instanceof Html) return v.text;
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) return (v as readonly HtmlValue[]).map(render).join('');
  return escapeHtml(String(v));
}

/** The template's literal parts are markup; every `${value}` is escaped (arrays: each item). */
export function html(strings: TemplateStringsArray, ...values: readonly HtmlValue[]): Html {
  let out = strings[0] ?? '';
  values.forEach((v, i) => (out += render(v) + (strings[i + 1] ?? '')));
  return Html.trusted(out);
}
