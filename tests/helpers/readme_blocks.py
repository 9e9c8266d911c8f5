"""The shell lines of a README section, as a user pastes them: tests run what the README says.

A section runs from its heading line to the next heading of the same or a higher level. Its ```sh
blocks give one line per command: `\\` continuations joined (as the shell joins them), blank and
comment-only lines dropped, trailing comments kept (the shell ignores them).

As a command, for shell scripts (tests/imx500/readme.sh), one line each:
    python -m tests.helpers.readme_blocks README.md "### Raspberry Pi AI Camera (IMX500)"
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_HEADING = re.compile(r"^(#{1,6}) ", flags=re.M)


def section(text: str, heading: str) -> str:
    """The text under the line `heading` (e.g. "## Convert") up to the next heading of its level or higher."""
    lines = text.split("\n")
    if heading not in lines:
        raise KeyError(f"no heading line {heading!r}")
    start = lines.index(heading) + 1
    level = len(heading) - len(heading.lstrip("#"))
    for i in range(start, len(lines)):
        m = _HEADING.match(lines[i])
        if m and len(m.group(1)) <= level and not _in_fence(lines[start:i]):
            return "\n".join(lines[start:i])
    return "\n".join(lines[start:])


def _in_fence(lines: list[str]) -> bool:
    """Whether these lines leave a ``` block open (a `# comment` inside a code block is no heading)."""
    return sum(1 for ln in lines if ln.startswith("```")) % 2 == 1


def sh_blocks(text: str) -> list[list[str]]:
    """Each ```sh block's commands in order, continuations joined, blank and comment-only lines dropped."""
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ").splitlines()
        blocks.append([ln.strip() for ln in joined if ln.strip() and not ln.lstrip().startswith("#")])
    return blocks


def sh_lines(text: str) -> list[str]:
    """All the ```sh blocks' commands in order (`sh_blocks` flattened)."""
    return [line for block in sh_blocks(text) for line in block]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.helpers.readme_blocks README.md 'HEADING LINE'", file=sys.stderr)
        return 2
    try:
        lines = sh_lines(section(Path(argv[0]).read_text(encoding="utf-8"), argv[1]))
    except KeyError as e:
        print(f"{argv[0]}: {e.args[0]}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
