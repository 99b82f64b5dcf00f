"""MkDocs hook: pages made from the code, so they cannot drift from it.

``cli-reference.md`` is the engine's argparse parser, command by command; ``changelog.md`` is
the repository's CHANGELOG.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_reference() -> str:
    """Every command's ``--help``, as the parser prints it."""
    sys.path.insert(0, str(ROOT))
    from segment_plugin.engine.cli import build_parser

    parser = build_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parts = [
        "# CLI reference\n",
        "Generated from the engine's argument parser when the site is built "
        "(`segment_plugin/engine/cli.py`). Run it as `segment-plugin` (or "
        "`.venv/bin/segment-plugin` in a checkout).\n",
        "```text\n" + parser.format_help() + "```\n",
    ]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        sub.prog = f"segment-plugin {name}"
        parts.append(f"## {name}\n\n```text\n{sub.format_help()}```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs API
    """Fill the generated pages; the others pass through."""
    if page.file.src_uri == "cli-reference.md":
        return cli_reference()
    if page.file.src_uri == "changelog.md":
        return (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    return markdown
