"""JSON's grammar for string literals, read in plain Python: the reference ``gpu_mm._ingest.long_strings`` is held
to (by ``tests/test_serve.py`` and ``benchmarks/asan_ingest.sh``). No imports, so a sanitizer build can use it."""


def long_strings_reference(raw: bytes, min_len: int) -> list[tuple[int, int]]:
    """The (start, end) offsets of the contents of the string literals in ``raw`` at least ``min_len`` bytes long
    that hold no backslash escape and no control character and are not object keys."""
    out, at, n = [], 0, len(raw)
    while (opening := raw.find(b'"', at)) >= 0:
        c, escaped = opening + 1, False
        while True:
            closing = raw.find(b'"', c)
            if closing < 0:
                return out
            backslash = raw.find(b"\\", c, closing)
            if backslash < 0:
                break
            escaped, c = True, backslash + 2
            if c > n:
                return out
        after = closing + 1
        while after < n and raw[after] in b" \t\n\r":
            after += 1
        if (closing - opening - 1 >= min_len and not escaped and not any(b < 0x20 for b in raw[opening + 1 : closing])
                and not (after < n and raw[after] == ord(":"))):
            out.append((opening + 1, closing))
        at = closing + 1
    return out
