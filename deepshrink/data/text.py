"""Real English sentences that ship with Python itself: the documentation topics in ``pydoc_data``.

Used to evaluate sentence-embedding models without labels (deepshrink.measure.embedding) and to
calibrate / distil them. Deterministic: topics in sorted order, sentences in reading order, exact
duplicates dropped, then an optional seeded shuffle.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from deepshrink.core.errors import ConfigError, DataError

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_LETTERS = re.compile(r"[A-Za-z]")


def _clean(block: str) -> str:
    return " ".join(block.split())


def _is_prose(sentence: str, min_chars: int, max_chars: int) -> bool:
    if not min_chars <= len(sentence) <= max_chars or not sentence[0].isupper():
        return False
    letters = len(_LETTERS.findall(sentence))
    return letters >= 0.7 * len(sentence.replace(" ", "")) and ">>>" not in sentence and "::" not in sentence


def python_doc_sentences(n: int | None = None, *, seed: int | None = 0, min_chars: int = 40,
                         max_chars: int = 300) -> list[str]:
    """Up to ``n`` prose sentences from Python's documentation topics (all of them when ``n`` is None).

    Paragraphs are split at blank lines, code blocks (indented or ``>>>``) are dropped, sentences are
    split at ``. `` before a capital letter and kept when they are ``min_chars..max_chars`` long and
    mostly letters. ``seed=None`` keeps reading order; an integer shuffles deterministically.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"number of sentences must be a positive integer, got {n!r}")
    if not 1 <= min_chars <= max_chars:
        raise ConfigError(f"need 1 <= min_chars <= max_chars, got {min_chars}, {max_chars}")
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataError("pydoc_data is not part of this Python installation") from None
    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            if block.startswith((" ", "\t")) or ">>>" in block:
                continue
            for sentence in _SPLIT.split(_clean(block)):
                if sentence not in seen and _is_prose(sentence, min_chars, max_chars):
                    seen.add(sentence)
                    out.append(sentence)
    return _shuffle_and_take(out, seed, n, "Python's documentation topics")


STDLIB_MODULES = ("abc", "argparse", "asyncio", "bisect", "calendar", "collections", "concurrent.futures",
                  "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
                  "email", "enum", "fractions", "functools", "gettext", "glob", "gzip", "hashlib", "heapq",
                  "hmac", "html", "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
                  "locale", "logging", "mailbox", "mimetypes", "multiprocessing", "numbers", "operator",
                  "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets",
                  "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "sqlite3", "ssl",
                  "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
                  "threading", "timeit", "tokenize", "traceback", "types", "typing", "unittest", "urllib.parse",
                  "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo")


def stdlib_docstring_sentences(n: int | None = None, *, seed: int | None = 0, min_chars: int = 40,
                               max_chars: int = 300, exclude: set[str] | None = None) -> list[str]:
    """Prose sentences from the docstrings of a fixed list of standard-library modules and their public
    members (another real-English source, e.g. for distillation, disjoint from evaluation text via
    ``exclude``)."""
    import importlib
    import inspect

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"number of sentences must be a positive integer, got {n!r}")
    skip = exclude or set()
    seen: set[str] = set()
    out: list[str] = []
    for name in STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr, None)
            if not attr.startswith("_") and getattr(obj, "__module__", None) == mod.__name__:
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for block in re.split(r"\n\s*\n", doc):
                if block.startswith((" ", "\t")) or ">>>" in block:
                    continue
                for sentence in _SPLIT.split(_clean(block)):
                    if sentence not in seen and sentence not in skip and _is_prose(sentence, min_chars, max_chars):
                        seen.add(sentence)
                        out.append(sentence)
    return _shuffle_and_take(out, seed, n, "standard-library docstrings")


def training_sentences(exclude: Iterable[str]) -> list[str]:
    """Unlabeled text disjoint from ``exclude`` (e.g. an evaluation's queries and corpus), for calibration and
    distillation: the rest of Python's documentation topics, then the standard-library docstrings."""
    if isinstance(exclude, (str, bytes)):
        raise ConfigError("training_sentences: exclude must be a collection of sentences, not one string")
    used = set(exclude)
    return [s for s in python_doc_sentences() if s not in used] + stdlib_docstring_sentences(exclude=used)


def _shuffle_and_take(out: list[str], seed: int | None, n: int | None, source: str) -> list[str]:
    """Shuffle with ``seed`` (when given) and keep the first ``n`` sentences (all when None)."""
    if seed is not None:
        random.Random(seed).shuffle(out)
    if n is not None:
        if n > len(out):
            raise DataError(f"{source} hold {len(out)} usable sentences, {n} asked")
        out = out[:n]
    return out
