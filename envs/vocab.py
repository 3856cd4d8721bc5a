"""The small text vocabulary shared by every mindloop world and agent.

Token 0 is both observation padding and the *silence* action (the agent says nothing this
frame); token 1 ends an answer. Words are lower-case; numbers are single tokens so that an
answer like "7" is one decision, not a spelling problem.

>>> ids = encode("reach the red ball", length=8)
>>> decode(ids)
'reach the red ball'
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SILENCE = 0
PAD = 0
EOS = 1

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
SHAPES: tuple[str, ...] = ("ball", "box", "cylinder")
MAX_NUMBER = 31  # the largest count a question can be answered with, one token per number
NUMBERS: tuple[str, ...] = tuple(str(n) for n in range(MAX_NUMBER + 1))

_SPECIAL: tuple[str, ...] = ("<silence>", "<eos>")
_WORDS: tuple[str, ...] = tuple(
    "reach touch go to the a an of how many balls ball fell dropped did you hear see ? "
    "which color was cue left right near far yes no".split()
)

VOCAB: tuple[str, ...] = (
    _SPECIAL + _WORDS + COLORS + tuple(s for s in SHAPES if s not in _WORDS) + NUMBERS
)
VOCAB_SIZE: int = len(VOCAB)
_INDEX: dict[str, int] = {word: i for i, word in enumerate(VOCAB)}
assert len(_INDEX) == VOCAB_SIZE, "vocabulary words must be unique"


def token_id(word: str) -> int:
    """The id of one word; a one-line error names the word if it is not in the vocabulary."""
    try:
        return _INDEX[word]
    except KeyError:
        raise ValueError(
            f"word {word!r} is not in the mindloop vocabulary; add it to envs/vocab.py "
            f"(known words: {', '.join(VOCAB[2:12])}, ...)"
        ) from None


def tokenize(text: str) -> list[str]:
    """Lower-case, split on spaces, and split a trailing '?' into its own token."""
    words: list[str] = []
    for raw in text.lower().split():
        if raw.endswith("?") and raw != "?":
            words.extend([raw[:-1], "?"])
        else:
            words.append(raw)
    return words


def encode(text: str, length: int) -> np.ndarray:
    """Token ids of ``text`` padded with 0 to ``length`` (int64, shape ``(length,)``)."""
    if length <= 0:
        raise ValueError(f"text length must be positive, got {length}")
    ids = [token_id(w) for w in tokenize(text)]
    if len(ids) > length:
        raise ValueError(f"{text!r} has {len(ids)} tokens, more than the text length {length}")
    out = np.zeros(length, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def decode(ids: Iterable[int]) -> str:
    """Words of ``ids`` with padding/silence dropped and decoding stopped at <eos>."""
    words: list[str] = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i == PAD:
            continue
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {VOCAB_SIZE})")
        words.append(VOCAB[i])
    return " ".join(words)


def number_token(n: int) -> int:
    """The token that answers the count ``n`` (0..MAX_NUMBER)."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"count {n} has no token; counts go from 0 to {MAX_NUMBER}")
    return _INDEX[str(n)]
