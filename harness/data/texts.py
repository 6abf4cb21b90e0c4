"""Texts for text-only language models (the PCICN setting): perplexity is measured on a given text instead of on
captions of images.

A run's texts are files (`--can-texts a.txt,b.txt`), each one a category named by its file stem, or the built-in
paragraph (category `paragraph`). Files are validated up front, every bad one named. A text is scored as one
sequence of at most 512 tokens with the tokenizer's own special tokens, as PCICN's authors do; windows only when
asked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import TextFileError, UnknownNameError

BUILTIN_CATEGORY = "paragraph"
# Written for this harness: plain, varied English prose, so that any tokenizer splits it into common pieces.
BUILTIN_PARAGRAPH = (
    "The old bridge over the river was built from grey stone more than two hundred years ago. Every morning the "
    "baker crosses it with a basket of warm bread, and every evening the fishermen return over it with their "
    "nets. In spring the water rises and carries branches from the hills, so the town keeps a small boat ready "
    "near the first arch. Children count the arches on their way to school: there are seven, and the middle one "
    "is the widest. Last winter a storm broke part of the railing, and the people of the town repaired it "
    "together. They chose the same grey stone, cut it by hand, and placed it so carefully that visitors can no "
    "longer tell the new stones from the old ones. On market days the bridge is full of carts, voices and the "
    "smell of apples, but at night it is quiet, and the only sound is the river moving slowly towards the sea."
)


@dataclass(frozen=True)
class TextWindow:
    """One scored sequence of a text, exactly as the model reads it (the tokenizer's own special tokens
    included): the whole text, or one window of it."""

    tokens: tuple[int, ...]

    @property
    def scoring_prompt(self) -> tuple[int, ...]:
        """What the scored tokens are conditioned on: the first token (a BOS, where the tokenizer adds one)."""
        return self.tokens[:1]

    @property
    def scored(self) -> tuple[int, ...]:
        """The tokens whose NLL is the text's perplexity: every token after the first (`labels=input_ids`)."""
        return self.tokens[1:]

    @property
    def opening(self) -> tuple[int, ...]:
        """The prompt a continuation is generated from: the sequence's first half."""
        return self.tokens[: max(1, len(self.tokens) // 2)]


@dataclass(frozen=True)
class TextSet:
    """The run's texts by category."""

    texts: dict[str, str]

    @property
    def categories(self) -> list[str]:
        return list(self.texts)

    def text(self, category: str) -> str:
        if category not in self.texts:
            raise UnknownNameError("text", category, self.categories)
        return self.texts[category]

    def content_hash(self, category: str) -> str:
        return hashlib.sha256(self.text(category).encode()).hexdigest()

    def content_hashes(self, category: str) -> list[str]:
        """The category's content as a data set gives it (harness.runner.probe.DataSet): its one text's hash."""
        return [self.content_hash(category)]


def load_text_set(paths: tuple[Path, ...] | None = None) -> TextSet:
    """The texts of `paths` (one category per file stem), or the built-in paragraph when none are given."""
    if not paths:
        return TextSet({BUILTIN_CATEGORY: BUILTIN_PARAGRAPH})
    texts, sources, problems = {}, {}, []  # sources: each category's file, for the duplicate-name message
    for path in (Path(p).expanduser() for p in paths):
        if path.stem in texts:
            problems.append(f"{path}: a second text named {path.stem!r} (after {sources[path.stem]}); rename one")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: no such file")
            continue
        except IsADirectoryError:
            problems.append(f"{path}: a folder, not a text file")
            continue
        except UnicodeDecodeError as error:
            problems.append(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})")
            continue
        problem = _not_text(text)
        if problem is not None:
            problems.append(f"{path}: {problem}")
            continue
        texts[path.stem], sources[path.stem] = text, str(path)
    if problems:
        raise TextFileError(f"{len(problems)} problem(s) with the texts:\n  " + "\n  ".join(problems))
    return TextSet(texts)


def _not_text(text: str) -> str | None:
    """Why `text` is not prose a language model's perplexity means something on (None when it is)."""
    if not text.strip():
        return "empty (it needs at least two tokens of text)"
    if "\0" in text:
        return f"holds {text.count(chr(0))} NUL byte(s): a binary file, not text"
    if not any(character.isalpha() for character in text):
        return "has no letters (digits, punctuation or symbols only): not prose to measure perplexity on"
    return None


def text_windows(tokenizer, text: str, *, max_tokens: int = 512, window: int | None = None) -> list[TextWindow]:
    """`text` as the model reads it: one sequence of at most `max_tokens` tokens, with the special tokens the
    tokenizer itself adds (never a BOS it would not add), as PCICN's authors score it; or, with `window`, its first
    `max_tokens` tokens cut into consecutive windows of `window` tokens, each wrapped in those special tokens."""
    if max_tokens < 2:
        raise ValueError(f"a text needs at least 2 tokens (one to condition on, one to score), got {max_tokens!r}")
    if window is not None and window < 1:
        raise ValueError(f"a text window must hold at least 1 token, got {window!r}")
    if window is None:
        sequences = [tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]]
    else:
        plain = tokenizer(text, add_special_tokens=False)["input_ids"]
        prefix, suffix = _special_tokens_around(tokenizer(text)["input_ids"], plain)
        plain = plain[:max_tokens]
        sequences = [prefix + plain[start : start + window] + suffix for start in range(0, len(plain), window)]
    windows = [TextWindow(tuple(int(t) for t in sequence)) for sequence in sequences if len(sequence) > 1]
    if not windows:
        lengths = ", ".join(str(len(sequence)) for sequence in sequences)
        raise TextFileError(f"the text tokenises to sequences of {lengths} token(s); each needs 2 to be scored")
    return windows


def _special_tokens_around(full: list[int], plain: list[int]) -> tuple[list[int], list[int]]:
    """The tokens the tokenizer adds before and after a text (`full`) that it encodes as `plain` without them."""
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise TextFileError("the tokenizer encodes the text differently with and without its special tokens")
