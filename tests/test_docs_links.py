"""Every relative link, image and ``#anchor`` in README.md and docs/*.md resolves, every repository path they
name in backticks exists, every ``--option`` they give a ``vimtune`` command is one it has, and every include
block is well formed (names an existing file and heading; its text being current is tests/test_readme_sync.py's
job).

Each checker below is also run on a page with a broken link, so a checker that finds nothing cannot pass.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import unicodedata
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
HTML_ID = re.compile(r"<a\b[^>]*\b(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
INCLUDE_OPEN = re.compile(r"<!-- include:")
# a repository path in backticks: `tests/helpers/x.py`, `benchmarks/results/transfer` (a stem of .md/.json files)
CODE_PATH = re.compile(r"`((?:src|tests|scripts|benchmarks|docs)/[^`\s*<>{}]+?)[/.,]?`")


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNC = _sync_module()


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links inside code are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the rendered text (no code ticks, emphasis or link targets), lower
    case, every character but letters, digits, ``_``, ``-`` and spaces dropped, spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows only its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*)(.+?)\1", r"\2", text)
    kept = "".join(c for c in text.lower() if c in "-_ " or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every ``#anchor`` a markdown page has: its headings' slugs (a repeated one gets ``-1``, ``-2``, ...)
    and the ``<a name/id>`` tags."""
    found: set[str] = set(HTML_ID.findall(text))
    seen: dict[str, int] = {}
    for _, title in HEADING.findall(FENCE.sub("", text)):
        slug = github_slug(title)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def link_targets(text: str) -> list[str]:
    """Targets of the inline links, images, reference definitions and ``<img src>`` / ``<a href>`` of a page."""
    prose = _prose(text)
    return LINK.findall(prose) + REFERENCE.findall(prose) + HTML_SRC.findall(prose)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One line per relative link of ``page`` whose file does not exist under ``root`` or whose ``#anchor`` is
    no heading of the page it points at."""
    problems = []
    for target in link_targets(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not path.exists():
            problems.append(f"{page.name}: link {target!r}: {path_part} does not exist")
        elif anchor and path.suffix == ".md" and unquote(anchor) not in anchors(path.read_text()):
            problems.append(f"{page.name}: link {target!r}: {path.name} has no heading with anchor #{anchor}")
        elif anchor and path.suffix != ".md":
            problems.append(f"{page.name}: link {target!r}: an anchor into a file that is not markdown")
    return problems


def code_path_problems(page: Path, root: Path = ROOT) -> list[str]:
    """One line per repository path named in backticks on ``page`` (``tests/...``, ``src/...``, ...) that is
    neither a file or folder under ``root`` nor the stem of one (``benchmarks/results/transfer``)."""
    problems = []
    for name in CODE_PATH.findall(FENCE.sub("", page.read_text())):
        path = root / name.split("::")[0]
        if not path.exists() and not any(path.parent.glob(f"{path.name}.*")):
            problems.append(f"{page.name}: `{name}` names no file under the repository")
    return problems


# `vimtune CMD [NAME] ... --flag ...` up to the end of the code span, line, table cell or shell operator
COMMAND_LINE = re.compile(r"vimtune (?P<words>[a-z]+(?: (?!-)[a-z_]+)?)(?P<rest>[^`\n|;&#)]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


@cache
def command_flags(words: str) -> frozenset[str] | None:
    """The options ``vimtune WORDS --help`` lists (``bench NAME`` included), None when WORDS is no command."""
    from vimtune.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*words.split(), "--help"])
        except SystemExit as exit_:
            if exit_.code:
                return None
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.getvalue()))


def stale_options(page: Path) -> list[str]:
    """One line per ``vimtune COMMAND ... --option`` on ``page`` whose command does not list that option."""
    from vimtune.cli import command_names

    problems = []
    text = re.sub(r"\\\n\s*", " ", page.read_text())  # join shell continuation lines
    for match in COMMAND_LINE.finditer(text):
        first = match["words"].split()[0]
        if first not in command_names():
            continue  # prose ("vimtune does ...")
        command = match["words"] if first == "bench" and command_flags(match["words"]) else first
        known = command_flags(command)
        for flag in FLAG.findall(match.group(0)[len(f"vimtune {command}"):]):
            if flag not in known:
                problems.append(f"{page.name}: `vimtune {command}` has no option {flag}")
    return problems


def include_problems(page: Path, root: Path = ROOT) -> list[str]:
    """One line per include block of ``page`` that is malformed (no closing tag) or names a file or heading
    that does not exist."""
    text = page.read_text()
    blocks = list(SYNC.BLOCK.finditer(text))
    problems = []
    if len(blocks) != len(INCLUDE_OPEN.findall(text)):
        problems.append(f"{page.name}: an `<!-- include: PATH -->` line without its `<!-- /include -->`")
    for block in blocks:
        source = root / block["path"]
        if not source.is_file():
            problems.append(f"{page.name}: includes {block['path']}, which does not exist")
        elif block["heading"]:
            try:
                SYNC.section(source.read_text(), block["heading"].strip(), block["path"])
            except ValueError as error:
                problems.append(f"{page.name}: {error}")
    return problems


@pytest.mark.parametrize("page", SYNC.pages(), ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", SYNC.pages(), ids=lambda p: p.name)
def test_every_repository_path_in_backticks_exists(page: Path) -> None:
    assert code_path_problems(page) == []


@pytest.mark.parametrize("page", SYNC.pages(), ids=lambda p: p.name)
def test_every_option_of_a_documented_command_exists(page: Path) -> None:
    assert stale_options(page) == []


def test_stale_options_are_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("`vimtune demo --results x --no-such-flag` and\n```\nvimtune bench transfer --protocol vtab \\\n"
                    "    --lr-factor 2\n```\nvimtune eval RUN --protocol last; vimtune does --anything\n")
    assert stale_options(page) == ["page.md: `vimtune demo` has no option --no-such-flag",
                                   "page.md: `vimtune bench transfer` has no option --lr-factor"]


@pytest.mark.parametrize("page", SYNC.pages(), ids=lambda p: p.name)
def test_every_include_names_an_existing_file_and_heading(page: Path) -> None:
    assert include_problems(page) == []


def test_the_pages_have_links_to_check() -> None:
    """The link pattern finds the README's links (a pattern that matched nothing would pass every page)."""
    targets = link_targets((ROOT / "README.md").read_text())
    assert "docs/models.md" in targets and any(t.endswith(".png") for t in targets)


@pytest.mark.parametrize(("heading", "slug"), [
    ("Quick start (fresh machine, Python >= 3.10)", "quick-start-fresh-machine-python--310"),
    ("The VTAB-1k protocol (`vimtune bench transfer --protocol vtab`)",
     "the-vtab-1k-protocol-vimtune-bench-transfer---protocol-vtab"),
    ("Memory allocator on CPU", "memory-allocator-on-cpu"),
    ("**Bold** and [a link](x.md) in `vim_small`", "bold-and-a-link-in-vim_small"),
])
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_checkers_report_broken_links_anchors_and_includes(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "other.md").write_text("# Other page\n\n## Setup\n\n## Setup\n")
    (tmp_path / "result.md").write_text("**Table**\n\n| a |\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n[ok](../other.md#setup-1) [ok](#page) ![ok](../result.md) [web](https://example.com/x)\n"
        "`[in code](missing.md)`\n```\n[in a fence](missing.md)\n```\n"
        "[gone](missing.md) ![gone](img/none.png) [bad anchor](../other.md#setup-2) [bad](#nowhere)\n"
        "<img src=\"gone.png\">\n"
        "<!-- include: result.md#Table -->\n| a |\n<!-- /include -->\n"
        "<!-- include: result.md#Chart -->\n<!-- /include -->\n"
        "<!-- include: absent.md -->\n<!-- /include -->\n"
        "<!-- include: result.md -->\nno closing tag\n"
        "`docs/page.md` and `docs/page` exist, `tests/gone.py` and `src/old/` do not\n"
    )
    problems = broken_links(page, tmp_path)
    assert len(problems) == 5, problems
    for expected in ("missing.md does not exist", "img/none.png", "#setup-2", "#nowhere", "gone.png"):
        assert any(expected in p for p in problems), expected
    paths = code_path_problems(page, tmp_path)
    assert len(paths) == 2 and "tests/gone.py" in paths[0] and "src/old" in paths[1], paths
    includes = include_problems(page, tmp_path)
    assert len(includes) == 3, includes
    for expected in ("without its", "Chart", "absent.md"):
        assert any(expected in p for p in includes), expected


def test_the_readme_routes_to_every_docs_page() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in link_targets((ROOT / "README.md").read_text())}
    assert sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked) == []
