"""Find the line on which a TOML key was written, so load errors can point at it.

`tomllib` returns plain dicts without positions. This scanner reads the text once and
records, for every table header and key it sees, the first line where it appears. It
understands what manifests use: `[a.b]` and `[[a.b]]` headers (array tables are indexed
by occurrence), dotted and quoted keys, and inline tables on one line.
"""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]

_NAME = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)"""
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(rf"^\s*({_NAME}(?:\s*\.\s*{_NAME})*)\s*=")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_NAME})\s*=")


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(_NAME, text)
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in parts)


class KeyLines:
    """Maps key paths (e.g. `("component", "env", "source")`) to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._scan(text)

    def _record(self, path: KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def _scan(self, text: str) -> None:
        table: KeyPath = ()
        array_counts: dict[tuple[str, ...], int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                names = _split_dotted(header.group(2))
                if header.group(1) == "[[":
                    index = array_counts.get(names, 0)
                    array_counts[names] = index + 1
                    table = (*names, index)
                else:
                    table = self._resolve_table(names, array_counts)
                self._record(table, number)
                continue
            key = _KEY.match(line)
            if not key:
                continue
            path = (*table, *_split_dotted(key.group(1)))
            self._record(path, number)
            rest = line[key.end() :]
            if rest.lstrip().startswith("{"):
                for inline in _INLINE_KEY.finditer(rest):
                    name = inline.group(1)
                    name = name[1:-1] if name[0] in "\"'" else name
                    self._record((*path, name), number)

    @staticmethod
    def _resolve_table(names: tuple[str, ...], array_counts: dict) -> KeyPath:
        # `[component.trigger]` after `[[component]]` belongs to the latest array item.
        for cut in range(len(names), 0, -1):
            prefix = names[:cut]
            if prefix in array_counts:
                return (*prefix, array_counts[prefix] - 1, *names[cut:])
        return names

    def line_of(self, path: KeyPath) -> int | None:
        """Return the line of `path`, or of its closest enclosing key or table."""
        for cut in range(len(path), 0, -1):
            line = self._lines.get(path[:cut])
            if line is not None:
                return line
        return None
