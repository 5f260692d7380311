"""Helpers every ``hyperkd`` sub-command shares: the help formatter, ``--storage-options``,
one-line parameter errors and a progress bar that checks nothing itself.

Defaults shown in ``--help`` come from :mod:`hyperkd.defaults`, the values the flows use too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from hyperkd import defaults


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (unless it is None or a flag) after its help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = isinstance(action.default, list | tuple | str) and not action.default
        if action.default is None or action.default is False or empty or "%(default)" in text:
            return text
        if action.default == argparse.SUPPRESS or "default" in text:  # said in words already
            return text
        return super()._get_help_string(action) or text


def add_parser(sub: argparse._SubParsersAction, name: str, **kw: Any) -> argparse.ArgumentParser:
    """A sub-command parser with :class:`HelpFormatter` and its help as the description."""
    kw.setdefault("description", kw.get("help"))
    return sub.add_parser(name, formatter_class=HelpFormatter, **kw)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=defaults.DEVICES, default="auto", help="default: CUDA when present"
    )


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="fsspec storage options of the command's URLs as JSON (e.g. "
        '\'{"endpoint_url": "https://s3.example"}\'); credentials come from the environment',
    )


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options`` as a dict; ``ValueError`` (one line) for anything else."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--storage-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("--storage-options must be a JSON object")
    return options


def storage_options(text: str | None) -> dict[str, Any]:
    """:func:`parse_storage_options`, refusing credentials too: they belong in the environment,
    not on a command line that a flow stores and shows."""
    options = parse_storage_options(text)
    if not options:
        return options
    from hyperkd.flows.params import no_credentials  # the one credential rule

    try:
        no_credentials(options)
    except ValueError as exc:
        raise ValueError(f"--storage-options: {exc}") from None
    return options


def validated(model: Any, **values: Any) -> Any:
    """``model(**values)``; a pydantic error becomes one ``ValueError`` line (``field: msg``)."""
    from pydantic import ValidationError

    from hyperkd.flows.params import one_line

    try:
        return model(**values)
    except ValidationError as exc:
        raise ValueError(one_line(exc)) from None


def progress(total: int | None, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr, shown only on a terminal (logs and pipes stay clean)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not sys.stderr.isatty())


def progress_iter(items: Any, total: int | None, desc: str, unit: str) -> Any:
    """``items`` with a bar that appears with the first item (so after the command checked its
    input) and closes with the loop."""
    bar = None
    try:
        for item in items:
            if bar is None:
                bar = progress(total, desc, unit)
            yield item
            bar.update(1)
    finally:
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def progress_of_steps(desc: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """``advance(done, total)`` for a call that reports its own progress; the bar appears on
    the first report (the callee reports once it has checked its input) and closes after."""
    bar: Any = None

    def advance(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress(total, desc, unit)
        bar.total = total
        bar.n = min(done, total)
        bar.refresh()

    try:
        yield advance
    finally:
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def progress_of_files(count: Callable[[], int], total: int, desc: str, unit: str) -> Iterator[None]:
    """A bar of ``count()`` (finished outputs on disk) out of ``total``, polled every second
    while the block runs: progress for a long call that reports none itself."""
    stop = threading.Event()

    def poll() -> None:
        bar = None
        while not stop.wait(1.0):
            if bar is None:
                bar = progress(total, desc, unit)
            bar.n = min(count(), total)
            bar.refresh()
        if bar is not None:
            bar.close()

    thread = threading.Thread(target=poll, name=f"progress-{desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
