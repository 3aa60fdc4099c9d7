"""Text files a user gives (label lists, class-id maps): UTF-8, with or without a
byte-order mark. Anything else is one error naming the file, line and byte, and what to do,
instead of a UnicodeDecodeError traceback (or, in another locale, silently wrong names)."""

from ppcls.utils.errors import DataError

_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


def read_lines(path, error=DataError):
    """(line number, text) of each line of `path`, decoded one line at a time, so that the
    first byte that is not UTF-8 is named by its line and its position in it (from 1)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                hint = " (it looks like UTF-16)" if line_no == 1 and raw.startswith(_UTF16_MARKS) else ""
                raise error(f"{path}: line {line_no}, byte {err.start + 1} is not UTF-8{hint}: "
                            "re-save the file as UTF-8") from None
