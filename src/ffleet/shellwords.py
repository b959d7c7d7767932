"""Split an option string into argv words exactly as shlex.split does, in time linear in its length."""
from __future__ import annotations

import re

# shlex grows each word one character at a time (`self.token += ch` on an attribute, which CPython
# cannot do in place), so a single 300 KB word took 1.6 s to split and a 10 MB one minutes. This
# scanner takes runs of ordinary characters with one regex match each and joins the pieces once.
_WHITESPACE = " \t\r\n"
_PLAIN = re.compile(r"[^ \t\r\n'\"\\]+")
_DOUBLE_PLAIN = re.compile(r'[^"\\]+')


def split(text: str) -> list[str]:
    """shlex.split(text) (POSIX rules, no comments): the same words, and ValueError with the same
    messages ("No closing quotation", "No escaped character") where shlex raises."""
    words: list[str] = []
    parts: list[str] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _WHITESPACE:
            if in_word:
                words.append("".join(parts))
                parts, in_word = [], False
            i += 1
        elif ch == "\\":
            if i + 1 >= n:
                raise ValueError("No escaped character")
            parts.append(text[i + 1])
            in_word = True
            i += 2
        elif ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("No closing quotation")
            parts.append(text[i + 1:end])
            in_word = True
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                m = _DOUBLE_PLAIN.match(text, i)
                if m:
                    parts.append(m.group())
                    i = m.end()
                if i >= n:
                    raise ValueError("No closing quotation")
                if text[i] == '"':
                    i += 1
                    break
                # a backslash: escapes only '"' and '\' inside double quotes, else stays as written
                if i + 1 >= n:
                    raise ValueError("No escaped character")
                nxt = text[i + 1]
                parts.append(nxt if nxt in '"\\' else "\\" + nxt)
                i += 2
            in_word = True
        else:
            m = _PLAIN.match(text, i)
            parts.append(m.group())
            in_word = True
            i = m.end()
    if in_word:
        words.append("".join(parts))
    return words
