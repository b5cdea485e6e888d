"""The prompt denylist: listed phrases block a prompt whatever its case, spacing or Unicode form."""

from __future__ import annotations

from pathlib import Path

from pixelgate.server.engine.prompt_denylist import PromptDenylist


def test_a_listed_phrase_blocks_whatever_its_case_and_spacing() -> None:
    """Case, runs of spaces, tabs and newlines cannot smuggle a phrase past the list."""
    denylist = PromptDenylist(["forbidden thing"])

    assert denylist.blocks("a FORBIDDEN   Thing at dusk")
    assert denylist.blocks("a forbidden\t\nthing")
    assert not denylist.blocks("a forbidden-free thing")


def test_compatibility_forms_are_folded_before_matching() -> None:
    """Full-width letters and ligatures read as the plain words they stand for."""
    denylist = PromptDenylist(["forbidden"])

    full_width = "".join(chr(ord(letter) + 0xFEE0) for letter in "forbidden")
    assert denylist.blocks(full_width)
    assert denylist.blocks("ﬁre and forbidden")  # a ligature elsewhere does not matter
    assert PromptDenylist(["fire"]).blocks("ﬁre")  # ﬁ is fi


def test_only_whole_words_match() -> None:
    """A phrase inside a longer word is no match ("art" does not block "party")."""
    denylist = PromptDenylist(["art"])

    assert not denylist.blocks("a party")
    assert denylist.blocks("modern art, oil")


def test_any_of_the_texts_can_block() -> None:
    """The negative prompt is checked as well as the prompt."""
    denylist = PromptDenylist(["forbidden"])

    assert denylist.blocks("a fox", "forbidden")
    assert not denylist.blocks("a fox", "blurry")


def test_an_empty_list_blocks_nothing() -> None:
    """No phrases (or only blank ones) configured: every prompt passes."""
    assert not PromptDenylist([]).blocks("anything at all")
    assert not PromptDenylist(["", "   "]).blocks("anything at all")


def test_the_file_adds_its_phrases_and_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    """One phrase a line in the file, beside the configured ones; # lines are comments."""
    listed = tmp_path / "denylist.txt"
    listed.write_text("# banned words\n\nfrom the file\n  # indented comment\n", encoding="utf-8")

    denylist = PromptDenylist.from_settings(["configured"], listed)

    assert denylist.blocks("a configured prompt")
    assert denylist.blocks("words From The File")
    assert not denylist.blocks("banned words")
    assert not denylist.blocks("indented comment")
