"""Progress on stderr: live tqdm bars on a terminal; plain, throttled lines when stderr is a file
or a pipe (`tlstudio train ... 2> log.txt`), so logs do not fill with carriage-return redraws."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PLAIN_EVERY_S = 10.0  # one plain line per task at most this often


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or a stream without isatty
        return False


class Bars:
    """`update(key, done, total, desc, postfix)` draws or prints the progress of one task;
    `finish(...)`/`close(key)` end it. Plain mode prints a task's first line when it starts (or,
    `quiet_start`, only after PLAIN_EVERY_S), then at most one per PLAIN_EVERY_S, and a last line
    when a task that printed or lasted PLAIN_EVERY_S ends."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, every: float = PLAIN_EVERY_S):
        self.stream = stream or sys.stderr
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.every = every
        self.bars: dict[str, Any] = {}
        self.plain: dict[str, list] = {}  # key -> [start time, last print time, printed?, quiet start?]

    def update(self, key: str, done: int, total: int | None, desc: str, postfix: str = "",
               quiet_start: bool = False) -> None:
        if self.tty:
            bar = self.bars.get(key)
            if bar is None:
                from tqdm import tqdm

                bar = self.bars[key] = tqdm(total=total, desc=desc, file=self.stream, leave=False,
                                            dynamic_ncols=True, unit="batch" if quiet_start else "it")
            if total is not None:
                bar.total = total
            bar.n = done
            bar.set_description_str(desc, refresh=False)
            if postfix:
                bar.set_postfix_str(postfix, refresh=False)
            bar.refresh()
            return
        now = time.monotonic()
        state = self.plain.get(key)
        if state is None:
            state = self.plain[key] = [now, now, False, quiet_start]
            if not quiet_start:
                self._line(desc, done, total, postfix)
                state[2] = True
            return
        if now - state[1] >= self.every:
            state[1] = now
            state[2] = True
            self._line(desc, done, total, postfix)

    def finish(self, key: str, done: int, total: int | None, desc: str, postfix: str = "") -> None:
        """The task ended: in plain mode a last line when it printed before or took at least
        `every` seconds (a quick task leaves no lines: the summary says what it did)."""
        state = self.plain.get(key)
        if not self.tty and state is not None and (state[2] or time.monotonic() - state[0] >= self.every):
            self._line(desc, done, total, postfix)
        self.close(key)

    def close(self, key: str | None = None) -> None:
        for k in [key] if key is not None else list(set(self.bars) | set(self.plain)):
            bar = self.bars.pop(k, None)
            if bar is not None:
                bar.close()
            self.plain.pop(k, None)

    def _line(self, desc: str, done: int, total: int | None, postfix: str) -> None:
        count = f"{done}/{total}" if total else f"{done}"
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        tail = f"  {postfix}" if postfix else ""
        try:
            print(f"{desc}: {count}{pct}{tail}", file=self.stream, flush=True)
        except (BrokenPipeError, ValueError):  # the reader went away: progress is not worth dying for
            pass
