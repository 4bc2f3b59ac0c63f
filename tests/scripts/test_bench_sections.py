"""docs/benchmarks.md: the full run and the side benchmarks' sections (bench_sections.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench_sections import carry_over, sections, write_section


def test_a_section_is_appended_then_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nfull run\n")
    write_section("egress", "Egress", "| a | 1 |", doc)
    write_section("tunnel", "Tunnel", "| t | 2 |", doc)
    write_section("egress", "Egress", "| a | 3 |", doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nfull run\n\n<!-- bench:egress -->\n## Egress\n")
    assert "| a | 3 |" in text and "| a | 1 |" not in text
    assert list(sections(text)) == ["egress", "tunnel"]
    assert text.count("<!-- bench:egress -->") == 1


def test_a_full_run_keeps_the_side_sections() -> None:
    old = "# B\n\nold run\n\n<!-- bench:rules -->\n## R\n\nx\n<!-- /bench:rules -->\n"
    assert carry_over(old, "# B\n\nnew run\n") == (
        "# B\n\nnew run\n\n<!-- bench:rules -->\n## R\n\nx\n<!-- /bench:rules -->\n"
    )
    assert carry_over("# B\n\nno sections\n", "# B\n\nnew\n") == "# B\n\nnew\n"
