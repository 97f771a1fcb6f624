"""Token counts for budgeting prompts: exact when an encoding is on disk, a safe upper bound otherwise.

Exact counts come from tiktoken. tiktoken downloads its vocabularies on first
use, which cannot work air-gapped and may hang behind a firewall, so this
module never lets it reach the network: an encoding is loaded only from
tiktoken's own cache (TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR or the temp-dir
default) or from the vocabulary files shipped inside the `bpe-openai` wheel
(byte-identical to OpenAI's; tiktoken checks their sha256). Whether that
worked is decided once per encoding and remembered.

Without an encoding, `estimate_tokens` gives an upper bound that is never
below cl100k_base or o200k_base (the encodings of every OpenAI chat model).
The argument, per run of characters:

* A BPE token holds at least one byte, so a text never has more tokens than
  UTF-8 bytes. Every character not covered below is charged one per byte.
* Both encodings split digits into pieces of at most three (\\p{N}{1,3}) and
  every 1-3 digit ASCII string is a single token, so a run of L ASCII digits
  is exactly ceil(L/3) tokens.
* A run of lowercase ASCII letters is never split by either pre-tokenizer
  (except just after an apostrophe, where cl100k splits off 's/'ll/...). BPE
  only stops merging when no two neighbouring tokens form a vocabulary entry,
  so two single-letter tokens can only sit side by side when their pair is
  not in the vocabulary (`_UNMERGED_PAIRS`, checked against both vocabularies
  by the tests). Counting the most tokens a run can hold under that rule
  gives about two tokens per three letters instead of one per letter.

The bound is loose (English is about a quarter of a token per byte); it is
meant for budgets that must never overflow a context window, not for billing.
"""

from __future__ import annotations

import gzip
import importlib.resources
import logging
import math
import os
import re
import threading
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

# Encodings of OpenAI chat models; an unknown model is counted with both, keeping the larger.
KNOWN_ENCODINGS = ("cl100k_base", "o200k_base")

# Lowercase letter pairs that are NOT a single token in cl100k_base or o200k_base
# (the union over both). Anything else in [a-z][a-z] is one token in both.
_UNMERGED_PAIRS = frozenset(
    "bq fj fz gj gk gq hj jg jv jw jx jy jz kq kx kz lq mz nq oq qf qg qj qk qo qv qy qz rj tj tq uq vq vz "
    "wq wv wz xg xh xj xk xq xu xv xw yf yj yq yv zg zj zq zr zv".split()
)

_RUN = re.compile(r"[a-z]+|[0-9]+")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s)|\n")

_lock = threading.Lock()
_encodings: dict[str, object | None] = {}  # name -> tiktoken.Encoding, or None when unavailable
_exact_enabled = os.environ.get("NEWSDESK_TOKENS", "").lower() != "estimate"


# --- public API ----------------------------------------------------------------


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in `text` for `model`; never fewer than the model's real count."""
    if not text:
        return 0
    counts = []
    for name in encodings_for(model):
        encoding = load_encoding(name)
        if encoding is None:
            return estimate_tokens(text)
        counts.append(len(encoding.encode(text, disallowed_special=())))
    return max(counts)


def count_messages(messages: Iterable[Mapping[str, object]], model: str | None = None) -> int:
    """Prompt tokens of a chat request: OpenAI's per-message overhead plus the content."""
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3  # <|start|>{role}<|message|>...<|end|>
        for key, value in message.items():
            if value is None:
                continue
            total += count_tokens(value if isinstance(value, str) else str(value), model)
            if key == "name":
                total += 1
    return total


def truncate_to_tokens(text: str, limit: int, model: str | None = None) -> str:
    """The longest prefix of `text` within `limit` tokens, cut at a sentence end when one
    is near, else at a word boundary. The result never exceeds `limit` tokens."""
    if limit <= 0 or not text:
        return ""
    if count_tokens(text, model) <= limit:
        return text
    # Largest prefix length that fits; counts grow with the prefix (up to BPE's tiny wobble,
    # which the final check below absorbs).
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(text[:middle], model) <= limit:
            low = middle
        else:
            high = middle - 1
    cut = _boundary_before(text, low)
    result = text[:cut].rstrip()
    while result and count_tokens(result, model) > limit:
        result = result[: _boundary_before(result, len(result) - 1)].rstrip()
    return result


def is_exact(model: str | None = None) -> bool:
    """True when counts for `model` come from a real tokenizer, False when they are the bound."""
    return all(load_encoding(name) is not None for name in encodings_for(model))


def encodings_for(model: str | None) -> tuple[str, ...]:
    if model:
        try:
            import tiktoken

            return (tiktoken.encoding_name_for_model(model),)
        except KeyError:
            pass
    return KNOWN_ENCODINGS


def estimate_tokens(text: str) -> int:
    """An upper bound on cl100k_base and o200k_base counts, without any vocabulary."""
    total = len(text.encode("utf-8"))
    for match in _RUN.finditer(text):
        run = match.group()
        total -= len(run)  # replace the one-per-byte charge of this run
        if run[0].isdigit():
            # A digit run touching other \p{N} characters (², ٣) may be chunked differently.
            if _is_numeric(text, match.start() - 1) or _is_numeric(text, match.end()):
                total += len(run)
            else:
                total += math.ceil(len(run) / 3)
        else:
            after_apostrophe = match.start() > 0 and text[match.start() - 1] == "'"
            total += _max_tokens_in_letter_run(run, free_prefix=2 if after_apostrophe else 0)
    return total


def set_exact(enabled: bool) -> None:
    """Turn exact counting off (always use the bound) or back on; for tests and benchmarks."""
    global _exact_enabled
    _exact_enabled = enabled


# --- exact encodings ---------------------------------------------------------------


def load_encoding(name: str):
    """The tiktoken Encoding `name` from local files only, or None. Decided once per name."""
    if not _exact_enabled:
        return None
    with _lock:
        if name not in _encodings:
            _encodings[name] = _load_offline(name)
        return _encodings[name]


def _load_offline(name: str):
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return None
    original = tiktoken.load.read_file

    def local_only(blobpath: str) -> bytes:
        if "://" not in blobpath:
            return original(blobpath)
        shipped = _shipped_vocabulary(blobpath.rsplit("/", 1)[-1])
        if shipped is None:
            raise _NotOffline(blobpath)
        return shipped

    # tiktoken reads its cache first and calls read_file only on a miss; routing that miss to
    # local files means no download is ever attempted. tiktoken still checks the sha256.
    # The constructor is called directly: tiktoken.get_encoding would reuse its own registry.
    tiktoken.load.read_file = local_only
    try:
        from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS

        encoding = tiktoken.Encoding(**ENCODING_CONSTRUCTORS[name]())
    except Exception as exc:  # missing file, hash mismatch, unknown name: all mean "no exact counts"
        log.info("token counts for %s use the conservative estimate (%s)", name, type(exc).__name__)
        return None
    finally:
        tiktoken.load.read_file = original
    return encoding


def _shipped_vocabulary(filename: str) -> bytes | None:
    try:
        resource = importlib.resources.files("bpe_openai") / "data" / f"{filename}.gz"
        return gzip.decompress(resource.read_bytes())
    except (ImportError, FileNotFoundError, OSError):
        return None


class _NotOffline(Exception):
    pass


# --- the bound -------------------------------------------------------------------------


def _max_tokens_in_letter_run(run: str, free_prefix: int = 0) -> int:
    """Most tokens BPE can leave in a lowercase run: two neighbouring single letters only
    where their pair is unmerged. The last letter may belong to a token reaching past the
    run, and the first `free_prefix` letters may be split off by the pre-tokenizer."""
    length = len(run)
    # best[i][s]: most tokens covering run[i:], s = the token before i was a single letter.
    next_single, next_multi = 0, 0  # best[i+1][True], best[i+1][False]
    after_multi = 0  # best[i+2][False]
    for i in range(length - 1, -1, -1):
        pair_free = i == 0 or i <= free_prefix or run[i - 1 : i + 1] in _UNMERGED_PAIRS
        single = 1 + next_single
        double = 1 + after_multi if i + 2 <= length else 0
        best_if_prev_multi = max(single, double)
        best_if_prev_single = max(single if (pair_free or i == length - 1) else 0, double)
        after_multi = next_multi
        next_single, next_multi = best_if_prev_single, best_if_prev_multi
    return next_multi


def _is_numeric(text: str, index: int) -> bool:
    return 0 <= index < len(text) and text[index].isnumeric()


def _boundary_before(text: str, position: int) -> int:
    """A cut point at or before `position`: a sentence end in the last 40%, else the last space."""
    position = max(0, min(position, len(text)))
    if position == len(text):
        return position
    window_start = int(position * 0.6)
    # endpos one past the cut lets the lookahead see the whitespace that follows a sentence end at the cut.
    ends = [m.end() for m in _SENTENCE_END.finditer(text, window_start, position + 1) if m.end() <= position]
    if ends:
        return ends[-1]
    space = text.rfind(" ", 0, position + 1)
    newline = text.rfind("\n", 0, position + 1)
    cut = max(space, newline)
    return cut if cut > 0 else position
