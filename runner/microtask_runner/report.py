"""The runner's report: per-microtask outcomes of one shard, in at most 4096 bytes.

The runner writes it to the pod's termination-message file after every
microtask; the operator reads it back from the pod status. Kubernetes keeps at
most 4096 bytes of a termination message, so ``Report.encode`` always fits that
budget, whatever the report holds: it first shortens error texts, then drops
them, then reports fewer outcomes (``covered_through``). The format is
documented in runner/README.md; it is the contract between runner and operator.

Standard library only: the operator imports this module, and the runner is
installed into arbitrary user images.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .indexset import MAX_INDEX, IndexSet

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_REPORT_BYTES",
    "REPORT_VERSION",
    "Report",
    "ReportError",
    "replace_current",
]

REPORT_VERSION = 1
#: Kubernetes truncates termination messages to 4096 bytes.
MAX_REPORT_BYTES = 4096
#: Error texts longer than this are cut before anything else is tried; no one
#: reads more in a status field, and it leaves room for the outcomes.
MAX_ERROR_CHARS = 1000
#: The runner error is the one thing a broken shard must say; it gets this much.
MAX_RUNNER_ERROR_CHARS = 1500
#: Error texts are dropped rather than cut below this: a stub explains nothing.
_MIN_ERROR_CHARS = 24
#: Sets whose text form is this short are written as text (readable in
#: ``kubectl describe``); longer ones are packed when packing is shorter.
_PLAIN_SET_CHARS = 48
#: Anything longer cannot be a report; refuse before parsing it.
_MAX_DECODE_CHARS = 16 * MAX_REPORT_BYTES
_MAX_EXIT_CODE_DIGITS = 10
_SURROGATES = re.compile("[\ud800-\udfff]")


class ReportError(ValueError):
    """The text is not a valid version-1 runner report."""


def _encode_set(indexes: IndexSet) -> str:
    plain = indexes.format()
    if len(plain) <= _PLAIN_SET_CHARS:
        return plain
    packed = indexes.to_packed()
    return packed if len(packed) < len(plain) else plain


def _clean(text: str) -> str:
    """Make text encodable as UTF-8 (lone surrogates become U+FFFD)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[: max(max_chars - 1, 0)] + "…"


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _seconds(value: float) -> float | int:
    if not math.isfinite(value) or value < 0:
        return 0  # not a duration; never let it break the encoding
    # Milliseconds are plenty for durations and keep the JSON short.
    rounded = round(value, 3)
    return int(rounded) if rounded.is_integer() and rounded < 1e15 else rounded


@dataclass(frozen=True)
class Report:
    """Outcomes of a shard's microtasks, as far as the runner got.

    Indexes of the shard in neither ``succeeded`` nor ``failed`` are
    *unreported*: not run yet, interrupted, or left out to fit the budget.
    """

    succeeded: IndexSet = IndexSet.EMPTY
    #: exit code -> indexes that failed with it (timeout = 124)
    failed: dict[int, IndexSet] = field(default_factory=dict)
    #: exit code -> error text of the first microtask that failed with it
    errors: dict[int, str] = field(default_factory=dict)
    #: outcomes of indexes above this were left out to fit the budget; None = all
    covered_through: int | None = None
    #: the microtask running when the report was written (crash attribution)
    current: int | None = None
    #: durations of the finished microtasks (including any left out of the report)
    seconds_total: float = 0.0
    seconds_max: float = 0.0
    count: int = 0
    #: set when the runner itself could not work (bad input, ...)
    runner_error: str | None = None

    # ----------------------------------------------------------------- views

    def failed_indexes(self) -> IndexSet:
        """All indexes that failed, whatever the exit code."""
        result = IndexSet.EMPTY
        for indexes in self.failed.values():
            result = result | indexes
        return result

    def reported(self) -> IndexSet:
        """Indexes with an outcome in this report (succeeded or failed)."""
        return self.succeeded | self.failed_indexes()

    def unreported(self, indexes: IndexSet) -> IndexSet:
        """The indexes of ``indexes`` (e.g. the shard's) without an outcome here."""
        return indexes - self.reported()

    def exit_code(self, index: int) -> int | None:
        """0 if the index succeeded, its exit code if it failed, None if unreported."""
        if index in self.succeeded:
            return 0
        for code, indexes in self.failed.items():
            if index in indexes:
                return code
        return None

    # -------------------------------------------------------------- encoding

    def encode(self) -> str:
        """Compact JSON of at most MAX_REPORT_BYTES bytes (UTF-8)."""
        return _Encoder(self).encode()

    @classmethod
    def decode(cls, text: str) -> Report:
        """Parse an encoded report. Raises ReportError on anything not a v1 report."""
        if not isinstance(text, str):
            raise ReportError(f"a report is text, not {type(text).__name__}")
        if len(text) > _MAX_DECODE_CHARS:
            raise ReportError(
                f"not a runner report: {len(text)} characters, reports are at most "
                f"{MAX_REPORT_BYTES} bytes"
            )
        stripped = text.strip()
        if not stripped:
            raise ReportError("not a runner report: empty text")
        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise ReportError(f"not a runner report: invalid JSON ({exc})") from None
        return _decode_object(data)


_CURRENT_FIELD = re.compile(r',"cur":\d+')


def replace_current(encoded: str, current: int | None) -> str | None:
    """``encoded`` (from ``Report.encode``) with ``current`` changed; None if over budget.

    Lets the runner move the crash-attribution marker without re-encoding a
    large report. Only the top level holds a ``"cur"`` key, and a raw quote
    cannot occur inside a JSON string, so the match is unambiguous.
    """
    new = "" if current is None else f',"cur":{current}'
    match = _CURRENT_FIELD.search(encoded)
    if match is not None:
        text = encoded[: match.start()] + new + encoded[match.end() :]
    else:
        # "n" is always written, right after where "cur" goes.
        at = encoded.find(',"n":')
        if at < 0:
            return None
        text = encoded[:at] + new + encoded[at:]
    return text if _size(text) <= MAX_REPORT_BYTES else None


class _Encoder:
    """Shrinks a report into the byte budget (errors first, then coverage)."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.errors = {
            code: _cut(_clean(text), MAX_ERROR_CHARS)
            for code, text in sorted(report.errors.items())
        }
        self.runner_error = (
            None
            if report.runner_error is None
            else _cut(_clean(report.runner_error), MAX_RUNNER_ERROR_CHARS)
        )

    def render(
        self,
        ok: str,
        failed: dict[int, str],
        errors: dict[int, str],
        covered_through: int | None,
    ) -> str:
        r = self.report
        obj: dict[str, Any] = {"v": REPORT_VERSION, "ok": ok}
        if failed:
            obj["fail"] = {str(code): text for code, text in failed.items()}
        if errors:
            obj["err"] = {str(code): text for code, text in errors.items()}
        if covered_through is not None:
            obj["thru"] = covered_through
        if r.current is not None:
            obj["cur"] = r.current
        obj["n"] = max(r.count, 0)
        obj["secs"] = _seconds(r.seconds_total)
        obj["max"] = _seconds(r.seconds_max)
        if self.runner_error is not None:
            obj["rerr"] = self.runner_error
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def encode(self) -> str:
        r = self.report
        ok = _encode_set(r.succeeded)
        failed = {code: _encode_set(s) for code, s in sorted(r.failed.items()) if s}
        text = self.render(ok, failed, self.errors, r.covered_through)
        if _size(text) <= MAX_REPORT_BYTES:
            return text

        # 1. Shorten every error text to the same, largest length that fits.
        longest = max((len(t) for t in self.errors.values()), default=0)
        if longest > _MIN_ERROR_CHARS:

            def with_errors(cap: int) -> str:
                cut = {code: _cut(t, cap) for code, t in self.errors.items()}
                return self.render(ok, failed, cut, r.covered_through)

            best = _largest_fitting(_MIN_ERROR_CHARS, longest, with_errors)
            if best is not None:
                return best

        # 2. Drop error texts.
        text = self.render(ok, failed, {}, r.covered_through)
        if _size(text) <= MAX_REPORT_BYTES:
            return text

        # 3. Report the outcomes of the first k reported indexes only.
        reported = r.reported()

        def with_coverage(k: int) -> str:
            if k == 0:
                first = reported.first()
                through = -1 if first is None else first - 1
                return self.render("", {}, {}, through)
            last = reported.take(k)[0].last()
            assert last is not None
            through = last
            window = IndexSet.from_range(0, through + 1)
            part_ok = _encode_set(r.succeeded & window)
            part_failed = {
                code: _encode_set(s & window) for code, s in sorted(r.failed.items()) if s & window
            }
            return self.render(part_ok, part_failed, {}, through)

        empty = with_coverage(0)
        if _size(empty) > MAX_REPORT_BYTES:
            # Only a runner error full of multi-byte or escaped characters gets here.
            self.runner_error = self._fit_runner_error(lambda: with_coverage(0))
            empty = with_coverage(0)
        best = _largest_fitting(1, len(reported) - 1, with_coverage)
        return empty if best is None else best

    def _fit_runner_error(self, render: Any) -> str:
        full = self.runner_error or ""
        lo, hi = 0, len(full)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            self.runner_error = _cut(full, mid)
            if _size(render()) <= MAX_REPORT_BYTES:
                lo = mid
            else:
                hi = mid - 1
        return _cut(full, lo)


def _largest_fitting(lo: int, hi: int, render: Any) -> str | None:
    """Binary search for the largest n in [lo, hi] whose rendering fits; None if none.

    Sizes grow with n (almost: compression can wobble), so the search returns
    a fitting rendering, the largest one in the monotone case.
    """
    if hi < lo:
        return None
    best: str | None = None
    text = render(lo)
    if _size(text) > MAX_REPORT_BYTES:
        return None
    best = text
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text = render(mid)
        if _size(text) <= MAX_REPORT_BYTES:
            lo, best = mid, text
        else:
            hi = mid - 1
    return best


# ------------------------------------------------------------------ decoding


def _int_field(data: dict[str, Any], key: str, minimum: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportError(f"bad report: {key!r} must be an integer, not {value!r:.40}")
    if not minimum <= value <= MAX_INDEX:
        raise ReportError(f"bad report: {key!r} out of range ({value})")
    return value


def _seconds_field(data: dict[str, Any], key: str) -> float:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"bad report: {key!r} must be a number, not {value!r:.40}")
    if not math.isfinite(value) or value < 0:
        raise ReportError(f"bad report: {key!r} must be a finite, non-negative number")
    return float(value)


def _set_field(text: Any, where: str) -> IndexSet:
    if not isinstance(text, str):
        raise ReportError(f"bad report: {where} must be an index set string")
    try:
        return IndexSet.from_compact(text)
    except ValueError as exc:
        raise ReportError(f"bad report: {where}: {exc}") from None


def _code_key(key: str, where: str) -> int:
    digits = key[1:] if key.startswith("-") else key
    if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_EXIT_CODE_DIGITS):
        raise ReportError(f"bad report: {where} key {key!r:.40} is not an exit code")
    return int(key)


def _dict_field(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ReportError(f"bad report: {key!r} must be an object")
    return value


def _decode_object(data: Any) -> Report:
    if not isinstance(data, dict):
        raise ReportError("not a runner report: not a JSON object")
    if "v" not in data:
        raise ReportError("not a runner report: no version field 'v'")
    version = data["v"]
    if isinstance(version, bool) or not isinstance(version, int) or version != REPORT_VERSION:
        raise ReportError(
            f"unsupported report version {version!r:.40} (this runner reads {REPORT_VERSION})"
        )
    succeeded = _set_field(data.get("ok", ""), "'ok'")
    failed: dict[int, IndexSet] = {}
    for key, text in _dict_field(data, "fail").items():
        code = _code_key(key, "'fail'")
        if code == 0:
            raise ReportError("bad report: exit code 0 listed as a failure")
        indexes = _set_field(text, f"'fail' of exit code {code}")
        if indexes:
            failed[code] = indexes
    errors: dict[int, str] = {}
    for key, text in _dict_field(data, "err").items():
        code = _code_key(key, "'err'")
        if not isinstance(text, str):
            raise ReportError(f"bad report: error text of exit code {code} must be a string")
        errors[code] = text
    runner_error = data.get("rerr")
    if runner_error is not None and not isinstance(runner_error, str):
        raise ReportError("bad report: 'rerr' must be a string")
    count = _int_field(data, "n", 0)
    report = Report(
        succeeded=succeeded,
        failed=failed,
        errors=errors,
        covered_through=_int_field(data, "thru", -1),
        current=_int_field(data, "cur", 0),
        seconds_total=_seconds_field(data, "secs"),
        seconds_max=_seconds_field(data, "max"),
        count=0 if count is None else count,
        runner_error=runner_error,
    )
    _check_consistent(report)
    return report


def _check_consistent(report: Report) -> None:
    seen = report.succeeded
    for code, indexes in sorted(report.failed.items()):
        overlap = seen & indexes
        if overlap:
            raise ReportError(
                f"bad report: indexes {overlap.format_bounded(60)} have two outcomes "
                f"(exit code {code} and another)"
            )
        seen = seen | indexes
    last = seen.last()
    if report.covered_through is not None and last is not None and last > report.covered_through:
        raise ReportError(
            f"bad report: outcome of index {last} reported beyond "
            f"covered_through {report.covered_through}"
        )
