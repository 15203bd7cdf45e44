"""Bearer tokens from a file (one a line), re-read when the file changes.

A mounted Kubernetes Secret is replaced by an atomic symlink swap, so the file is
stat'ed (at most once per ``recheck_s``) and re-read when its identity, size or
mtime moves. A file that vanishes or cannot be read keeps the last good tokens (a
rotation in progress must not lock every client out) and logs once. Tokens are
compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mesh.errors import InvalidArgument

log = logging.getLogger(__name__)

#: What clients send: ``authorization: Bearer <token>`` (gRPC metadata keys are lowercase).
HEADER = "authorization"
SCHEME = "bearer "


def parse_tokens(text: str) -> frozenset[str]:
    """Non-empty, non-comment lines, stripped."""
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


class TokenFile:
    """The tokens in ``path``; ``tokens()`` re-reads the file when it changed."""

    def __init__(self, path: str | Path, *, recheck_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._recheck_s = recheck_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._checked = float("-inf")
        self._tokens = self._read_or_raise()

    def _read_or_raise(self) -> frozenset[str]:
        try:
            stamp = self._stat()
            tokens = parse_tokens(self.path.read_text())
        except OSError as e:
            raise InvalidArgument(f"cannot read the token file {self.path}: {e.strerror or e}") from None
        if not tokens:
            raise InvalidArgument(f"the token file {self.path} holds no token: write one token a line")
        self._stamp = stamp
        self._checked = self._monotonic()
        return tokens

    def _stat(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns

    def tokens(self) -> frozenset[str]:
        now = self._monotonic()
        if now - self._checked < self._recheck_s:
            return self._tokens
        with self._lock:
            self._checked = now
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    fresh = parse_tokens(self.path.read_text())
                    if fresh:
                        self._tokens, self._stamp = fresh, stamp
                        log.info("token file %s re-read: %d token(s)", self.path, len(fresh))
                    else:
                        log.warning("token file %s is empty; keeping the previous tokens", self.path)
            except OSError as e:
                log.warning("token file %s unreadable (%s); keeping the previous tokens", self.path, e.strerror or e)
        return self._tokens

    def first(self) -> str:
        """The token this process presents when it calls others (the file's first line)."""
        text = self.path.read_text() if self.path.exists() else ""
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                return line.strip()
        return next(iter(sorted(self._tokens)))


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of the first ``authorization: Bearer`` header, else None."""
    for key, value in metadata:
        if key == HEADER:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            if text[: len(SCHEME)].lower() == SCHEME:
                return text[len(SCHEME):].strip()
            return ""
    return None


def accepted(token: str, tokens: frozenset[str]) -> bool:
    """Constant-time membership (every candidate is compared)."""
    got = token.encode()
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(got, t.encode())
    return ok
