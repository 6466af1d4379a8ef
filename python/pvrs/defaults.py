"""Defaults shared by the API and the CLI, in a module that imports nothing heavy (the CLI
builds its parser from them without loading torch)."""

from __future__ import annotations

# Padded tokens per forward batch: a few long samples or many short ones.
DEFAULT_BATCH_TOKENS = 8192
# Judge scores are on the reference tool's 0-100 scale.
DEFAULT_MIN_SCORE = 50.0
