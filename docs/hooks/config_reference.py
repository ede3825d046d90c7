"""MkDocs hook: the configuration reference page (config-reference.md) is generated from the config
models at build time (`oger.config_reference`) instead of kept in docs/, so it cannot drift from the
schema."""

from __future__ import annotations

from mkdocs.structure.files import File, Files

PAGE = "config-reference.md"


def on_files(files: Files, config) -> Files:
    from oger.config_reference import reference_markdown

    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
