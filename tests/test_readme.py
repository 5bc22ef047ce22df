"""Every fenced code block of README.md runs as written, in an empty directory (issue item 15).

README.md is read when the tests are collected, so a later edit is covered without touching this
file. Python blocks run with this interpreter in a subprocess; bash blocks run with bash, the venv's
`bin` first on PATH (so `backtest-kit` and `python3` are this environment's) and the repository on
PYTHONPATH (so the console script imports this checkout). A block that cannot run here carries an
HTML comment right above its fence (other comments such as `<!-- ci:test -->` may sit in between):

- `<!-- readme-test: skip (reason) -->`: not run;
- `<!-- readme-test: only backtest-kit (reason) -->`: only its `backtest-kit ...` commands run (the
  install steps of the CI command around them are the CI's own).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = ("python", "bash")
TIMEOUT = 180  # seconds per block; each takes a few at most
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)\s*$")
_COMMENT = re.compile(r"^\s*<!--(?P<body>.*?)-->\s*$")
_MARKER = re.compile(r"^\s*readme-test:\s*(?P<kind>skip|only backtest-kit)\s*\((?P<reason>[^)]*\S[^)]*)\)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "skip", "only backtest-kit" or None
    reason: str
    bad_marker: str | None = None  # a readme-test comment that does not parse

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.lang or 'text'}"


def parse_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text` with the readme-test marker from the comments just above each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        marker, reason, bad = _marker_above(lines, i)
        blocks.append(Block(i + 1, opening["lang"].lower(), "\n".join(lines[i + 1:end]) + "\n", marker, reason, bad))
        i = end + 1
    return blocks


def _marker_above(lines: list[str], fence_index: int) -> tuple[str | None, str, str | None]:
    j = fence_index - 1
    while j >= 0:
        comment = _COMMENT.match(lines[j])
        if comment is None:
            break
        body = comment["body"]
        if "readme-test" in body:
            marker = _MARKER.match(body)
            if marker is None:
                return None, "", body.strip()
            return marker["kind"], marker["reason"].strip(), None
        j -= 1
    return None, "", None


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))


def to_run(block: Block) -> str | None:
    """The code the test runs for `block`, or None when the block is marked skip."""
    if block.marker == "skip":
        return None
    if block.marker == "only backtest-kit":
        commands = [part.strip() for line in block.code.splitlines() for part in line.split("&&")]
        return "\n".join(c for c in commands if c.startswith("backtest-kit")) + "\n"
    return block.code


def run_block(lang: str, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "MPLBACKEND": "Agg"}
    if lang == "python":
        (cwd / "readme_block.py").write_text(code, encoding="utf-8")
        command = [sys.executable, "readme_block.py"]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_every_block_is_run_or_explicitly_marked() -> None:
    """A block in another language, or a malformed marker, would silently escape this test."""
    assert BLOCKS, "README.md has no code blocks?"
    assert [b.id for b in BLOCKS if b.bad_marker] == [], "malformed readme-test marker"
    unrunnable = [b.id for b in BLOCKS if b.marker != "skip" and b.lang not in RUNNABLE]
    assert unrunnable == [], f"blocks neither python/bash nor marked `readme-test: skip (reason)`: {unrunnable}"
    only = [b for b in BLOCKS if b.marker == "only backtest-kit"]
    assert all(b.lang == "bash" and "backtest-kit" in (to_run(b) or "") for b in only)
    runnable = [b for b in BLOCKS if to_run(b)]
    assert len(runnable) >= len(BLOCKS) // 2, "most README blocks should run as written"


@pytest.mark.parametrize("block", [b for b in BLOCKS if to_run(b)], ids=lambda b: b.id)
def test_readme_block_runs_in_an_empty_directory(block: Block, tmp_path: Path) -> None:
    code = to_run(block)
    assert code is not None and block.lang in RUNNABLE
    result = run_block(block.lang, code, tmp_path)
    assert result.returncode == 0, (
        f"{block.id} failed (exit {result.returncode}) in an empty directory:\n{code}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )


def test_the_parser_sees_markers_languages_and_code() -> None:
    text = (
        "intro\n<!-- ci:run -->\n<!-- readme-test: skip (needs a real exchange) -->\n```bash\nlive\n```\n"
        "```python\nprint(1)\n```\n<!-- readme-test: skip -->\n```text\nx\n```\n"
        "<!-- readme-test: only backtest-kit (CI) -->\n```bash\npip install . && backtest-kit backtest\n```\n"
    )
    skip, plain, bad, only = parse_blocks(text)
    assert (skip.line, skip.lang, skip.code, skip.marker, skip.reason) == (4, "bash", "live\n", "skip",
                                                                            "needs a real exchange")
    assert (plain.lang, plain.code, plain.marker) == ("python", "print(1)\n", None) and to_run(plain) == "print(1)\n"
    assert bad.bad_marker == "readme-test: skip" and bad.marker is None  # a marker needs its reason
    assert to_run(skip) is None and to_run(only) == "backtest-kit backtest\n"
