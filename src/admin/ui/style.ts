/**
 * The audit view's one stylesheet, served from the admin listener itself at /ui/style.css (the
 * CSP allows styles from 'self' only; no inline style, no font or asset from elsewhere).
 */
export const STYLE_CSS = `:root { color-scheme: light; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #ffffff; --head: #f6f8fa; --ok: #116329; --bad: #a40e26; --accent: #0550ae; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem; background: #24292f; color: #fff; }
header .brand { font-weight: 600; }
header nav { display: flex; gap: 1rem; flex: 1; }
header nav a { color: #d0d7de; text-decoration: none; }
header nav a[aria-current="page"] { color: #fff; text-decoration: underline; }
header .logout { margin-left: auto; }
header .role { color: #d0d7de; }
main { padding: 1rem 1.2rem 3rem; }
h1 { font-size: 1.35rem; margin: .2rem 0 1rem; word-break: break-all; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
a { color: var(--accent); }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--head); font-weight: 600; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head); padding: 0 .2em; }
.ok { color: var(--ok); }
.failed, .error { color: var(--bad); }
.pending, .note, .count { color: var(--muted); }
.end-open { color: var(--accent); font-weight: 600; }
form.filters { display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: flex-end; padding: .8rem; background: var(--head); border: 1px solid var(--line); margin-bottom: .8rem; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
input, select, button { font: inherit; padding: .3rem .45rem; border: 1px solid var(--line); border-radius: 4px; }
button { background: #f3f4f6; cursor: pointer; }
form.login { display: flex; flex-direction: column; gap: .6rem; max-width: 24rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; word-break: break-all; }
`;
