"""Reading the project's Markdown pages: fences, sections, links, anchors."""

import dataclasses
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pages whose links are checked and whose commands and snippets run.
PAGES = (
    "README.md",
    *sorted(
        os.path.join("docs", name)
        for name in os.listdir(os.path.join(REPO, "docs"))
        if name.endswith(".md")
    ),
    os.path.join("examples", "README.md"),
    os.path.join("benchmarks", "README.md"),
)

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.S | re.M)
# An HTML comment on the line above a fence: `<!-- not run: REASON -->`
# (a block that cannot run here) or `<!-- signature -->` (a signature).
_MARKER = re.compile(r"<!--\s*(not run:\s*(.*?)|signature)\s*-->\n\Z", re.S)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
# `[text](target)` and `![alt](target)`; the text may span lines.
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class Fence:
    """One fenced block of a page."""

    page: str
    line: int
    language: str
    code: str
    not_run: str | None  # the reason given by a `<!-- not run: ... -->`
    signature: bool  # after `<!-- signature -->`

    @property
    def name(self):
        return f"{self.page}:{self.line}"


def read(page):
    with open(os.path.join(REPO, page)) as file:
        return file.read()


def fences(page):
    """The fenced blocks of `page`, in order."""
    text = read(page)
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        marker = _MARKER.search(before[-500:])
        found.append(
            Fence(
                page=page,
                line=before.count("\n") + 1,
                language=match.group(1),
                code=match.group(2),
                not_run=marker.group(2) if marker else None,
                signature=bool(marker) and marker.group(1) == "signature",
            )
        )
    return found


def prose(text):
    """`text` with its fenced blocks blanked: same length, same lines."""
    return _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def section(page, heading):
    """The text of `page` under `heading` (a heading's text, without the
    `#`s), up to the next heading of the same or a higher level."""
    text = read(page)
    headings = list(_HEADING.finditer(prose(text)))
    for index, match in enumerate(headings):
        if match.group(2) != heading:
            continue
        level = len(match.group(1))
        end = next(
            (
                later.start()
                for later in headings[index + 1 :]
                if len(later.group(1)) <= level
            ),
            len(text),
        )
        return text[match.end() : end]
    raise AssertionError(f"{page} has no heading {heading!r}")


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page):
    """The `#anchors` GitHub gives the headings of `page`."""
    seen = {}
    result = set()
    for match in _HEADING.finditer(prose(read(page))):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(page):
    """`(line, target)` of each link in `page`'s prose."""
    text = prose(read(page))
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in _LINK.finditer(text)
    ]


def inline_commands(page):
    """The `python -m ...` code spans of `page`'s prose, each on one line."""
    return [
        " ".join(span.split())
        for span in re.findall(r"`(python\s+-m\s[^`]+)`", prose(read(page)))
    ]
