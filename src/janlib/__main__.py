"""Command line: python -m janlib {pull,list,info} ...

  pull NAME            download and verify a registry model, print its path
  list                 show registry models and whether they are cached
  info NAME_OR_PATH    summarize a GGUF file's metadata and tensors
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Any

from . import registry
from .fetch import fetch_model, is_cached, resolve_cache_dir

_MAX_VALUE_CHARS = 80
_MAX_LIST_ITEMS = 8


def _pull(args: argparse.Namespace) -> None:
    print(fetch_model(args.name, cache_dir=args.cache_dir))


def _list(args: argparse.Namespace) -> None:
    rows = [("NAME", "SIZE", "ARCH", "CACHED", "DESCRIPTION")]
    for entry in registry.REGISTRY.values():
        default = " (default)" if entry.name == registry.DEFAULT_MODEL else ""
        rows.append((
            entry.name,
            f"{entry.size / 1e6:.1f} MB",
            entry.arch,
            "yes" if is_cached(entry, args.cache_dir) else "no",
            entry.description + default,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for *cells, last in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + last)
    print(f"cache: {resolve_cache_dir(args.cache_dir)}")


def _format_value(value: Any) -> str:
    if isinstance(value, list) and len(value) > _MAX_LIST_ITEMS:
        return f"[{len(value)} items]"
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def _info(args: argparse.Namespace) -> None:
    from .gguf import load_gguf  # imported lazily: pull and list must work without it

    path = fetch_model(args.name_or_path, cache_dir=args.cache_dir)
    with load_gguf(path) as model:
        print(f"path: {path}")
        print(f"metadata ({len(model.metadata)} keys):")
        for key, value in model.metadata.items():
            print(f"  {key} = {_format_value(value)}")

        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for tensor in model.tensors.values():
            counts[str(tensor.qtype)] += 1
            sizes[str(tensor.qtype)] += tensor.nbytes
        print(f"tensors: {len(model.tensors)}, {sum(sizes.values()):,} bytes")
        for qtype, count in counts.most_common():
            print(f"  {qtype}: {count} tensors, {sizes[qtype]:,} bytes")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        help="model cache (default: $JANLIB_CACHE, else $XDG_CACHE_HOME/janlib, else ~/.cache/janlib)",
    )

    parser = argparse.ArgumentParser(prog="python -m janlib", description="janlib model tools")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pull = commands.add_parser("pull", parents=[common], help="download and verify a registry model, print its path")
    pull.add_argument("name", help=f"registry name, e.g. {registry.DEFAULT_MODEL}")
    pull.set_defaults(run=_pull)

    listing = commands.add_parser("list", parents=[common], help="list registry models")
    listing.set_defaults(run=_list)

    info = commands.add_parser("info", parents=[common], help="summarize a GGUF file (pulls registry models first)")
    info.add_argument("name_or_path", help="registry name or path of a .gguf file")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:  # a CLI reports failures, it does not dump tracebacks
        print(f"janlib: error: {str(error) or type(error).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
