"""Reading a large JSON object's top-level arrays one element at a time, in bounded memory.

`json.load` of COCO train2017's instances JSON (about 450 MB, most of it segmentation polygons) builds Python
objects for the whole file: several GB of RAM in every process that reads it. Here the file is read in chunks and
each element of a top-level array is decoded on its own by the standard library's C decoder (`raw_decode`), handed
to a callback and dropped, so the peak is one chunk plus what the callback keeps.
"""
import json
import re

_WS = re.compile(r'[ \t\n\r]*')
CHUNK = 1 << 23  # characters read at a time


class JSONStreamError(ValueError):
    """The file is not a JSON object (or is cut short); the message says where."""


class _Reader:
    """A text buffer over a file that is refilled as decoding moves on."""

    def __init__(self, f):
        self.f, self.buf, self.pos, self.eof, self.offset = f, '', 0, False, 0
        self.decoder = json.JSONDecoder()

    def _more(self):
        if self.eof:
            return False
        chunk = self.f.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.offset += self.pos
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def peek(self):
        """The next character that is not white space ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ''

    def expect(self, chars):
        c = self.peek()
        if not c or c not in chars:
            raise JSONStreamError(f'expected {" or ".join(repr(x) for x in chars)} at character '
                                  f'{self.offset + self.pos}, found {c or "the end of the file"!r}')
        self.pos += 1
        return c

    def value(self):
        """The next JSON value, decoded whole."""
        self.peek()
        while True:
            try:
                v, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self._more():  # maybe cut by the chunk boundary: read on and decode it again
                    continue
                raise JSONStreamError(f'{e.msg.removesuffix(" at")} at character {self.offset + e.pos}') from None
            if end >= len(self.buf) and not self.eof and isinstance(v, (int, float)) and self._more():
                continue  # a number at the very end of the buffer may go on in the next chunk
            self.pos = end
            return v


def stream_object(f, handlers):
    """Decode the JSON object in text file `f`. For each top-level key in `handlers` whose value is an array,
    handlers[key](element) is called for every element in order; other keys' values are decoded whole and
    returned in a dict (keep them small). A key in `handlers` whose value is not an array is returned as it is."""
    r = _Reader(f)
    r.expect('{')
    out = {}
    if r.peek() == '}':
        return out
    while True:
        key = r.value()
        if not isinstance(key, str):
            raise JSONStreamError(f'expected a key string at character {r.offset + r.pos}')
        r.expect(':')
        if key in handlers and r.peek() == '[':
            r.expect('[')
            out[key] = _stream_array(r, handlers[key])
        else:
            out[key] = r.value()
        if r.expect(',}') == '}':
            return out


def _stream_array(r, handler):
    """Hand each element of the array (its '[' consumed) to handler; returns the element count."""
    n = 0
    if r.peek() == ']':
        r.pos += 1
        return n
    while True:
        handler(r.value())
        n += 1
        if r.expect(',]') == ']':
            return n
