"""Flags and constants shared by several commands."""

from __future__ import annotations

import argparse

from pvrs.store.sources import SOURCE_HELP

EXIT_USAGE = 2


def add_model_args(p: argparse.ArgumentParser) -> None:
    from pvrs.engines.models import DEFAULT_MODEL, DTYPES

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"HF id, local folder or built-in (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda when visible), cpu, cuda, cuda:1, ..."
    )
    p.add_argument("--dtype", default="auto", choices=DTYPES)


def add_model_and_store_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument(
        "--variant",
        default="templated",
        help="prompt variant of stored vectors (default templated)",
    )
    p.add_argument("--mask-strategy", default="answer_mean", help="mask strategy of stored vectors")
    p.add_argument("--source", metavar="DIR|ORG/NAME", help=f"where stored vectors are read: {SOURCE_HELP}")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (with --temperature > 0)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--system", default=None, help="system prompt (default: the template's own)")
