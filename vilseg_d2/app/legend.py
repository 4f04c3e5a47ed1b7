"""What the page writes about a result: the legend (each class's colour and share of the pixels,
the largest first) and a one-line summary (time, settings, notes). Class names are the user's
text: they are escaped, never read as HTML."""

from __future__ import annotations

import html
from typing import List, Sequence

from .segmenter import WebResult

__all__ = ["legend_html", "summary_markdown"]

# Absent classes named in the legend before "and N more".
MAX_ABSENT_NAMED = 20


def legend_html(result: WebResult) -> str:
    """The legend as an HTML table (``id="vilseg-legend"``): a colour swatch (the overlay's colour
    of the class), the class name and its share of the pixels, largest share first; the classes
    found nowhere follow in one line."""
    segmentation = result.segmentation
    colors = segmentation.metadata().stuff_colors
    shares = segmentation.shares()
    order = sorted(shares, key=lambda c: -shares[c])
    index = {c: k for k, c in enumerate(segmentation.vocabulary)}
    rows: List[str] = []
    for name in order:
        r, g, b = colors[index[name]]
        rows.append(
            '<tr class="vilseg-legend-row">'
            f'<td><span class="vilseg-swatch" style="display:inline-block;width:1.2em;'
            f'height:1.2em;border:1px solid #444;background:rgb({r},{g},{b})"></span></td>'
            f'<td class="vilseg-class">{html.escape(name)}</td>'
            f'<td class="vilseg-share" style="text-align:right">{100 * shares[name]:.1f}%</td>'
            "</tr>"
        )
    absent = [c for c in segmentation.vocabulary if c not in shares]
    footer = ""
    if absent:
        named = ", ".join(html.escape(c) for c in absent[:MAX_ABSENT_NAMED])
        more = (
            f" and {len(absent) - MAX_ABSENT_NAMED} more" if len(absent) > MAX_ABSENT_NAMED else ""
        )
        footer = f'<p class="vilseg-absent">Not found in the image: {named}{more}.</p>'
    return (
        '<div id="vilseg-legend"><table>'
        "<thead><tr><th></th><th>class</th><th>pixels</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{footer}</div>"
    )


def summary_markdown(result: WebResult, input_notes: Sequence[str] = ()) -> str:
    """One line of what was done and how long it took, then the notes (the input's first, e.g. a
    downscaled image, then the result's)."""
    segmentation = result.segmentation
    height, width = segmentation.labels.shape
    lines = [
        f"Segmented {width} x {height} pixels with {len(segmentation.vocabulary)} classes in "
        f"**{segmentation.seconds:.2f} s** ({result.settings.describe()}); drawn in "
        f"{result.draw_seconds:.2f} s."
    ]
    lines += [f"- {note}" for note in (*input_notes, *result.notes)]
    return "\n".join(lines)
