"""Stop strings over streamed text: nothing that might begin a stop string is released early."""

from __future__ import annotations


class StopStringFilter:
    """feed(piece) returns the text that is safe to emit; .stopped is set once a stop string appears.

    Text that could still grow into a stop string is held back until the next piece shows it
    does not; on a match everything from the stop string on is dropped."""

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text
        self._held = ""

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        keep = self._longest_partial_suffix(text)
        cut = self._first_match(text)
        if cut >= 0 and cut <= len(text) - keep:  # no stop string that starts earlier can still complete
            return self._stop(text, cut)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held-back text, once generation has ended: up to a stop string it holds, if any."""
        text, self._held = self._held, ""
        if self.stopped:
            return ""
        cut = self._first_match(text)
        return self._stop(text, cut) if cut >= 0 else text

    def _first_match(self, text: str) -> int:
        """Where the earliest stop string in text starts (setting .matched), -1 when none is there."""
        cut, self.matched = min(((i, s) for s, i in ((s, text.find(s)) for s in self.stop) if i >= 0),
                                default=(-1, None))
        return cut

    def _stop(self, text: str, cut: int) -> str:
        self.stopped = True
        self._held = ""
        return text[:cut]

    def _longest_partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


class IndentLimit:
    """llama.cpp's n_indent: generation ends at the first line indented by fewer than n_indent
    spaces or tabs (useful for code completion); that line's text after its indentation is cut.

    feed(piece) returns the text safe to emit: a line's start is held until its first other
    character shows its indentation."""

    def __init__(self, n_indent: int):
        self.n_indent = n_indent
        self.stopped = False
        self._held = ""
        self._seen_newline = False

    def feed(self, piece: str) -> str:
        if self.n_indent <= 0:
            return piece
        if self.stopped:
            return ""
        text, out = self._held + piece, []
        self._held = ""
        while text:
            if not self._seen_newline:
                cut = text.find("\n")
                if cut < 0:
                    out.append(text)
                    break
                out.append(text[:cut + 1])
                text = text[cut + 1:]
                self._seen_newline = True
                continue
            indent = len(text) - len(text.lstrip(" \t"))
            if indent == len(text):  # only indentation so far: wait for the rest of the line
                self._held = text
                break
            if indent < self.n_indent:  # an empty line counts as unindented, as in llama.cpp
                self.stopped = True
                out.append(text[:indent])
                break
            out.append(text[:indent])
            text = text[indent:]
            self._seen_newline = False
        return "".join(out)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return "" if self.stopped else text
