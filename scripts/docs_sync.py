#!/usr/bin/env python3
"""Refreshes the code blocks of the docs from the code they quote.

A block is quoted with a marker line right before it:

    <!-- include: examples/adoption/src/lib.rs#write -->
    ```rust
    ...
    ```

and the source marks the region with `ANCHOR: write` / `ANCHOR_END: write` comments. Run it
after changing quoted code:

    python3 scripts/docs_sync.py docs/implementation_guide.md

The test `services/file-service/tests/docs.rs` fails while a block differs from its source.
"""
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- include: (?P<path>[^#\s]+)#(?P<anchor>[\w-]+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def region(path, anchor):
    lines = (ROOT / path).read_text().splitlines()
    start = end = None
    for i, line in enumerate(lines):
        if re.search(rf"ANCHOR: {re.escape(anchor)}\s*$", line):
            start = i + 1
        elif re.search(rf"ANCHOR_END: {re.escape(anchor)}\s*$", line):
            end = i
    if start is None or end is None:
        raise SystemExit(f"{path}: no ANCHOR {anchor}")
    kept = [l for l in lines[start:end] if not re.search(r"ANCHOR(_END)?: ", l)]
    return textwrap.dedent("\n".join(kept)).strip("\n") + "\n"


def sync(doc):
    text = doc.read_text()
    new = MARKER.sub(
        lambda m: f"<!-- include: {m['path']}#{m['anchor']} -->\n```{m['lang']}\n{region(m['path'], m['anchor'])}```",
        text,
    )
    doc.write_text(new)
    return text != new


if __name__ == "__main__":
    for name in sys.argv[1:]:
        changed = sync(Path(name))
        print(f"{name}: {'updated' if changed else 'in sync'}")
