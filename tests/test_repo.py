"""Repository hygiene: nothing points outside the repository, and protocol citations resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_DOC = "docs/binance.md"
# Spelled in pieces so that this file does not match itself.
OUTSIDE_POINTERS = ("../" + "shared", "shared/" + "binance-protocol")
# A section sign followed by a number, except RFC section numbers ("RFC 6455 §5.2").
CITATION = re.compile(r"(?<!RFC \d{4} )§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)


def repo_files() -> list[str]:
    """Tracked files plus untracked ones that are not ignored, relative to the root."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in out.split("\0") if name and (ROOT / name).is_file())


def text_files() -> dict[str, str]:
    """Every repository file that decodes as UTF-8, by path."""
    texts = {}
    for name in repo_files():
        try:
            texts[name] = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def doc_sections() -> set[str]:
    """The section numbers of docs/binance.md, from its numbered headings."""
    return set(HEADING.findall((ROOT / PROTOCOL_DOC).read_text(encoding="utf-8")))


def test_no_file_points_outside_the_repository() -> None:
    """No file mentions the out-of-repository protocol digest or its directory."""
    offenders = [
        (name, pointer)
        for name, text in text_files().items()
        for pointer in OUTSIDE_POINTERS
        if pointer in text
    ]
    assert offenders == []


def test_protocol_doc_has_its_sections() -> None:
    """docs/binance.md numbers the sections the code relies on, §1 to §7 with their parts."""
    assert doc_sections() == {
        "1", "1.1", "1.2", "1.3", "1.4", "1.5",
        "2", "2.1", "2.2", "2.3",
        "3", "3.1", "3.2",
        "4", "4.1", "4.2", "4.3", "4.4", "4.5",
        "5", "6", "7",
    }  # fmt: skip


def test_every_citation_names_an_existing_section() -> None:
    """Every §N citation in the repository names a section of docs/binance.md."""
    sections = doc_sections()
    dangling = [
        (name, number)
        for name, text in text_files().items()
        for number in CITATION.findall(text)
        if number not in sections
    ]
    assert dangling == []


def test_files_with_bare_citations_name_the_doc() -> None:
    """A file citing §N also names docs/binance.md, so a reader knows what § refers to."""
    unnamed = [
        name
        for name, text in text_files().items()
        if name != PROTOCOL_DOC and CITATION.search(text) and PROTOCOL_DOC not in text
    ]
    assert unnamed == []


def test_citation_pattern_reads_doc_references() -> None:
    """The citation pattern finds section numbers and skips RFC section numbers."""
    sample = "see docs/binance.md §1.2-§1.5 and §7, but RFC 6455 §5.2 is not ours"
    assert CITATION.findall(sample) == ["1.2", "1.5", "7"]
