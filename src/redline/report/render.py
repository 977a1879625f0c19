"""Markdown and self-contained HTML from one neutral document model (sections of blocks).

The HTML needs nothing but the file: images are base64 data URIs, the CSS is inline, there are
no fonts or scripts from elsewhere, and a Content-Security-Policy forbids any other origin, so a
stray external reference would fail loudly in a browser instead of leaking a request. A tiny
inline script marks each `<img>` with `data-ok="1"` once it has decoded (naturalWidth > 0),
which lets a headless browser prove that every figure rendered.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)
    table_id: str = ""


@dataclass
class Image:
    name: str
    alt: str
    png: bytes


@dataclass
class Details:
    """A collapsed block: `summary` is plain text; `html` is markup this package generated (an
    inline SVG figure, escaped text) and is inserted as is; `md` is its Markdown stand-in."""

    summary: str
    html: str
    md: str = ""


@dataclass
class Alert:
    """A paragraph that must not be missed: a box in HTML, bold in Markdown."""

    text: str


Block = str | Table | Image | Details | Alert


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[str | Alert]
    sections: list[Section]


def _md_cell(text: str) -> str:
    # `<` would open raw HTML in most Markdown renderers; log text must stay text.
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return text.replace("\n", " ").replace("\r", " ")


def table_markdown(t: Table) -> str:
    """A GitHub-style pipe table ("None." when it has no rows)."""
    if not t.rows:
        return (f"*{_md_cell(t.caption)}*\n\n" if t.caption else "") + "None."
    align = ["---:" if i in t.numeric else "---" for i in range(len(t.headers))]
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines = [f"*{_md_cell(t.caption)}*", ""] + lines
    return "\n".join(lines)


def markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    for p in doc.intro:
        out += [f"**{p.text}**" if isinstance(p, Alert) else p, ""]
    out += ["Contents: " + " · ".join(f"[{s.title}](#{s.id})" for s in doc.sections), ""]
    for s in doc.sections:
        out += [f'<a id="{s.id}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                out += [table_markdown(b), ""]
            elif isinstance(b, Image):
                out += [f"![{_md_cell(b.alt)}]({b.name})", ""]
            elif isinstance(b, Alert):
                out += [f"**{b.text}**", ""]
            elif isinstance(b, Details):
                out += ["<details>", f"<summary>{_md_cell(b.summary)}</summary>", "", b.md, "",
                        "</details>", ""]
            else:
                out += [b, ""]
    return "\n".join(out).rstrip() + "\n"


# Layout rule: nothing is wider than the page. Tables scroll inside their own box (.wrap) and
# wrap long cells; text, figures and SVGs shrink or break anywhere rather than push the page
# sideways (the report test checks this in Chromium at 1280 px).
_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#222;
background:#fafafa;line-height:1.45}
main{max-width:1240px;margin:0 auto;padding:1rem}
p,li,summary,figcaption{overflow-wrap:anywhere}
h1{font-size:1.6rem;margin:.2rem 0 1rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.82rem;background:#fff}
th,td{border:1px solid #d5d5d5;padding:.2rem .4rem;vertical-align:top;text-align:left}
td{max-width:32rem;overflow-wrap:break-word}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{caption-side:top;text-align:left;font-style:italic;padding:.2rem 0}
figure{margin:.8rem 0;background:#fff;border:1px solid #e3e3e3;padding:.5rem;display:inline-block;
max-width:100%}
img,svg{max-width:100%;height:auto}nav a{margin-right:.8rem}code{background:#f0f0f0;padding:0 .2rem}
.wrap{overflow-x:auto;max-width:100%}
details{margin:.3rem 0;background:#fff;border:1px solid #e3e3e3;padding:.3rem .6rem;max-width:100%}
summary{cursor:pointer}.warn{background:#fff4e5;border-left:4px solid #f28e2b;padding:.4rem .8rem}
"""

_SCRIPT = """
(function () {
  function check() {
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].complete && imgs[i].naturalWidth > 0) { imgs[i].setAttribute("data-ok", "1"); ok++; }
    }
    document.body.setAttribute("data-images", String(imgs.length));
    document.body.setAttribute("data-images-ok", String(ok));
  }
  window.addEventListener("load", check);
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")


def _html_table(t: Table) -> str:
    e = html.escape
    if not t.rows:
        cap = f"<em>{e(t.caption)}</em><br>" if t.caption else ""
        return f"<p>{cap}None.</p>"
    head = "".join(f"<th scope=\"col\">{e(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        cells = "".join(f"<td class=\"n\">{e(c)}</td>" if i in t.numeric else f"<td>{e(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{e(t.caption)}</caption>" if t.caption else ""
    tid = f' id="{e(t.table_id)}"' if t.table_id else ""
    return (f"<div class=\"wrap\"><table{tid}>{cap}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _html_text(p: str | Alert) -> str:
    if isinstance(p, Alert):
        return f"<p class=\"warn\">{html.escape(p.text)}</p>"
    return f"<p>{html.escape(p)}</p>"


def page_html(doc: Document) -> str:
    """The whole report as one HTML page that opens offline."""
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             f"<title>{e(doc.title)}</title><style>{_CSS}</style></head><body><main>",
             f"<h1>{e(doc.title)}</h1>"]
    parts += [_html_text(p) for p in doc.intro]
    parts.append("<nav>" + "".join(f"<a href=\"#{e(s.id)}\">{e(s.title)}</a>" for s in doc.sections)
                 + "</nav>")
    for s in doc.sections:
        parts.append(f"<section id=\"{e(s.id)}\"><h2>{e(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Table):
                parts.append(_html_table(b))
            elif isinstance(b, Image):
                data = base64.b64encode(b.png).decode("ascii")
                parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{e(b.alt)}\" "
                             f"data-name=\"{e(b.name)}\"><figcaption>{e(b.alt)}</figcaption></figure>")
            elif isinstance(b, Details):
                parts.append(f"<details><summary>{e(b.summary)}</summary>{b.html}</details>")
            else:
                parts.append(_html_text(b))
        parts.append("</section>")
    parts.append(f"</main><script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)
