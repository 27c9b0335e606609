"""The documentation the benchmarks write into: whole, each generated block once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
#: The largest page is under 80 KB; an edit that multiplied a file (a replace of an empty string
#: once made docs/quantify.md 70 MB) must not pass unnoticed.
MAX_PAGE_BYTES = 512 * 1024


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_page_is_whole_and_each_generated_block_appears_once(page: Path) -> None:
    assert page.stat().st_size < MAX_PAGE_BYTES
    text = page.read_text(encoding="utf-8")
    starts = re.findall(r"<!-- ([\w-]+):start -->", text)
    ends = re.findall(r"<!-- ([\w-]+):end -->", text)
    assert sorted(starts) == sorted(ends) and len(starts) == len(set(starts)), page.name
    for name in starts:  # a block's end follows its start
        assert text.index(f"<!-- {name}:start -->") < text.index(f"<!-- {name}:end -->")
