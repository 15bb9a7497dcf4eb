"""The runner's report: per-microtask outcomes of one shard, in at most 4096 bytes.

The runner writes it to the pod's termination-message file after every
microtask; the operator reads it back from the pod status. Kubernetes keeps at
most 4096 bytes of a termination message, so ``Report.encode`` always fits that
budget, whatever the report holds: it first shortens error texts, then drops
them, then reports fewer outcomes (``covered_through``). The format is
documented in runner/README.md; it is the contract between runner and operator.

While a shard runs, the runner writes a *live* report (``encode_live``): the last full
encoding plus three fixed-width numbers it updates in place, without encoding anything
again, as microtasks start and finish: ``"okfrom"``/``"okto"``, a run of consecutive
indexes that succeeded since the full encoding, and ``"cur"``, the microtask running now.
The numbers are padded with spaces (JSON whitespace), so the text stays valid JSON at any
moment. ``Report.decode`` folds the run into the outcomes; a reader that does not know the
run sees the outcomes of the full encoding only, which is merely behind (those microtasks
would run again), never wrong.

Standard library only: the operator imports this module, and the runner is
installed into arbitrary user images.
"""

from __future__ import annotations

import math

from .indexset import MAX_INDEX, IndexSet
from .values import Value

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_REPORT_BYTES",
    "REPORT_VERSION",
    "Report",
    "ReportError",
    "encode_live",
    "live_number",
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
#: Width of a live report's in-place numbers (``live_number``): any index fits.
LIVE_NUMBER_CHARS = 20
_LIVE_TAIL = ',"okfrom":{},"okto":{},"cur":{}}}'
#: What the live numbers add to an encoding; the full part is encoded within the rest.
_LIVE_BYTES = len(_LIVE_TAIL.format("", "", "")) - 1 + 3 * LIVE_NUMBER_CHARS

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


#: What JSON strings escape (``json.dumps(..., ensure_ascii=False)`` exactly): the quote, the
#: backslash and control characters.
_ESCAPES = {
    **{code: f"\\u{code:04x}" for code in range(0x20)},
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def _string(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"'


def _dumps(obj: dict[str, Any]) -> str:
    """Compact JSON of a report's fields, as ``json.dumps`` writes it, without importing json.

    Values are strings, integers, finite floats and objects of strings: all a report holds.
    """
    parts = []
    for key, value in obj.items():
        if isinstance(value, str):
            text = _string(value)
        elif isinstance(value, dict):
            text = "{" + ",".join(f"{_string(k)}:{_string(v)}" for k, v in value.items()) + "}"
        else:
            text = repr(value)  # int, or a finite float: what json writes for them
        parts.append(f"{_string(key)}:{text}")
    return "{" + ",".join(parts) + "}"


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
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
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


class Report(Value):
    """Outcomes of a shard's microtasks, as far as the runner got.

    Indexes of the shard in neither ``succeeded`` nor ``failed`` are
    *unreported*: not run yet, interrupted, or left out to fit the budget.
    """

    _fields = (
        "succeeded",
        "failed",
        "errors",
        "covered_through",
        "current",
        "seconds_total",
        "seconds_max",
        "count",
        "runner_error",
        "retried",
    )
    succeeded: IndexSet
    #: exit code -> indexes that failed with it (timeout = 124)
    failed: dict[int, IndexSet]
    #: exit code -> error text of the first microtask that failed with it
    errors: dict[int, str]
    #: outcomes of indexes above this were left out to fit the budget; None = all
    covered_through: int | None
    #: the microtask running when the report was written (crash attribution)
    current: int | None
    #: durations of the finished microtasks (including any left out of the report)
    seconds_total: float
    seconds_max: float
    count: int
    #: set when the runner itself could not work (bad input, ...)
    runner_error: str | None
    #: exit code -> indexes that failed with it once and ran again in this pod (an attempt
    #: more each); their outcome above is that of the second run
    retried: dict[int, IndexSet]

    def __init__(
        self,
        succeeded: IndexSet = IndexSet.EMPTY,
        failed: dict[int, IndexSet] | None = None,
        errors: dict[int, str] | None = None,
        covered_through: int | None = None,
        current: int | None = None,
        seconds_total: float = 0.0,
        seconds_max: float = 0.0,
        count: int = 0,
        runner_error: str | None = None,
        retried: dict[int, IndexSet] | None = None,
    ) -> None:
        self._set(
            succeeded=succeeded,
            failed={} if failed is None else failed,
            errors={} if errors is None else errors,
            covered_through=covered_through,
            current=current,
            seconds_total=seconds_total,
            seconds_max=seconds_max,
            count=count,
            runner_error=runner_error,
            retried={} if retried is None else retried,
        )

    # ----------------------------------------------------------------- views

    def failed_indexes(self) -> IndexSet:
        """All indexes that failed, whatever the exit code."""
        result = IndexSet.EMPTY
        for indexes in self.failed.values():
            result = result | indexes
        return result

    def retried_indexes(self) -> IndexSet:
        """Indexes that ran twice in this pod (failed, then ran again)."""
        result = IndexSet.EMPTY
        for indexes in self.retried.values():
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
        import json  # not at import time: the runner starts without it

        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise ReportError(f"not a runner report: invalid JSON ({exc})") from None
        return _decode_object(data)


def live_number(value: int | None) -> bytes:
    """A live report's in-place number: right-aligned in ``LIVE_NUMBER_CHARS`` (None: null)."""
    return b"%20d" % value if value is not None else b"                null"


class LiveReport(Value):
    """A live report (see the module doc) and where its in-place numbers are."""

    _fields = ("data", "okto_at", "cur_at", "can_run")
    #: the whole report, UTF-8; at most MAX_REPORT_BYTES
    data: bytes
    #: byte offsets of the ``okto`` and ``cur`` numbers (``LIVE_NUMBER_CHARS`` bytes each)
    okto_at: int
    cur_at: int
    #: False: outcomes were left out to fit the budget, so the run must stay empty (outcomes
    #: above ``covered_through`` would look reported); ``cur`` still moves
    can_run: bool

    def __init__(self, data: bytes, okto_at: int, cur_at: int, can_run: bool = True) -> None:
        self._set(data=data, okto_at=okto_at, cur_at=cur_at, can_run=can_run)


def encode_live(report: Report, run_from: int) -> LiveReport:
    """``report`` with an empty run starting at ``run_from``, and ``report.current`` as ``cur``.

    The run's end (``okto``, exclusive) and ``cur`` are then updated in place.
    """
    base = Report(
        succeeded=report.succeeded,
        failed=report.failed,
        errors=report.errors,
        covered_through=report.covered_through,
        seconds_total=report.seconds_total,
        seconds_max=report.seconds_max,
        count=report.count,
        runner_error=report.runner_error,
        retried=report.retried,
    )
    encoder = _Encoder(base, budget=MAX_REPORT_BYTES - _LIVE_BYTES)
    text = encoder.encode()
    number = live_number(run_from).decode()
    tail = _LIVE_TAIL.format(number, number, live_number(report.current).decode())
    data = (text[:-1] + tail).encode("utf-8")
    cur_at = len(data) - 1 - LIVE_NUMBER_CHARS
    okto_at = cur_at - len(',"cur":') - LIVE_NUMBER_CHARS
    can_run = not encoder.cut_coverage and report.covered_through is None
    return LiveReport(data, okto_at, cur_at, can_run)


_CURRENT_KEY = ',"cur":'


def replace_current(encoded: str, current: int | None) -> str | None:
    """``encoded`` (from ``Report.encode``) with ``current`` changed; None if over budget.

    Lets the runner move the crash-attribution marker without re-encoding a
    large report. Only the top level holds a ``"cur"`` key, and a raw quote
    cannot occur inside a JSON string, so the match is unambiguous.
    """
    new = "" if current is None else f"{_CURRENT_KEY}{current}"
    at = encoded.find(_CURRENT_KEY)
    if at >= 0:
        end = at + len(_CURRENT_KEY)
        while end < len(encoded) and encoded[end].isdigit():
            end += 1
        text = encoded[:at] + new + encoded[end:]
    else:
        # "n" is always written, right after where "cur" goes.
        at = encoded.find(',"n":')
        if at < 0:
            return None
        text = encoded[:at] + new + encoded[at:]
    return text if _size(text) <= MAX_REPORT_BYTES else None


class _Encoder:
    """Shrinks a report into the byte budget (errors first, then coverage)."""

    def __init__(self, report: Report, budget: int = MAX_REPORT_BYTES) -> None:
        self.report = report
        self.budget = budget
        #: set when outcomes had to be left out (``covered_through``) to fit the budget
        self.cut_coverage = False
        self.errors = {
            code: _cut(_clean(text), MAX_ERROR_CHARS)
            for code, text in sorted(report.errors.items())
        }
        self.runner_error = (
            None
            if report.runner_error is None
            else _cut(_clean(report.runner_error), MAX_RUNNER_ERROR_CHARS)
        )
        self.retried = {code: _encode_set(s) for code, s in sorted(report.retried.items()) if s}

    def render(
        self,
        ok: str,
        failed: dict[int, str],
        errors: dict[int, str],
        covered_through: int | None,
        retried: dict[int, str] | None = None,
    ) -> str:
        r = self.report
        obj: dict[str, Any] = {"v": REPORT_VERSION, "ok": ok}
        if failed:
            obj["fail"] = {str(code): text for code, text in failed.items()}
        if retried is None:
            retried = self.retried
        if retried:
            obj["again"] = {str(code): text for code, text in retried.items()}
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
        return _dumps(obj)

    def fits(self, text: str) -> bool:
        return _size(text) <= self.budget

    def encode(self) -> str:
        r = self.report
        ok = _encode_set(r.succeeded)
        failed = {code: _encode_set(s) for code, s in sorted(r.failed.items()) if s}
        text = self.render(ok, failed, self.errors, r.covered_through)
        if self.fits(text):
            return text

        # 1. Shorten every error text to the same, largest length that fits.
        longest = max((len(t) for t in self.errors.values()), default=0)
        if longest > _MIN_ERROR_CHARS:

            def with_errors(cap: int) -> str:
                cut = {code: _cut(t, cap) for code, t in self.errors.items()}
                return self.render(ok, failed, cut, r.covered_through)

            best = _largest_fitting(_MIN_ERROR_CHARS, longest, with_errors, self.fits)
            if best is not None:
                return best

        # 2. Drop error texts.
        text = self.render(ok, failed, {}, r.covered_through)
        if self.fits(text):
            return text

        # 3. Report the outcomes of the first k reported indexes only.
        self.cut_coverage = True
        reported = r.reported()

        def with_coverage(k: int) -> str:
            if k == 0:
                first = reported.first()
                through = -1 if first is None else first - 1
                return self.render("", {}, {}, through, {})
            last = reported.take(k)[0].last()
            assert last is not None
            through = last
            window = IndexSet.from_range(0, through + 1)
            part_ok = _encode_set(r.succeeded & window)
            part_failed = {
                code: _encode_set(s & window) for code, s in sorted(r.failed.items()) if s & window
            }
            part_retried = {
                code: _encode_set(s & window) for code, s in sorted(r.retried.items()) if s & window
            }
            return self.render(part_ok, part_failed, {}, through, part_retried)

        empty = with_coverage(0)
        if not self.fits(empty):
            # Only a runner error full of multi-byte or escaped characters gets here.
            self.runner_error = self._fit_runner_error(lambda: with_coverage(0))
            empty = with_coverage(0)
        best = _largest_fitting(1, len(reported) - 1, with_coverage, self.fits)
        return empty if best is None else best

    def _fit_runner_error(self, render: Callable[[], str]) -> str:
        full = self.runner_error or ""
        lo, hi = 0, len(full)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            self.runner_error = _cut(full, mid)
            if self.fits(render()):
                lo = mid
            else:
                hi = mid - 1
        return _cut(full, lo)


def _largest_fitting(
    lo: int, hi: int, render: Callable[[int], str], fits: Callable[[str], bool]
) -> str | None:
    """Binary search for the largest n in [lo, hi] whose rendering fits; None if none.

    Sizes grow with n (almost: compression can wobble), so the search returns
    a fitting rendering, the largest one in the monotone case.
    """
    if hi < lo:
        return None
    best: str | None = None
    text = render(lo)
    if not fits(text):
        return None
    best = text
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text = render(mid)
        if fits(text):
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


def _sets_by_code(data: dict[str, Any], key: str) -> dict[int, IndexSet]:
    """An object of failure exit codes -> index sets (``fail``, ``again``), empty sets left out."""
    result: dict[int, IndexSet] = {}
    for name, text in _dict_field(data, key).items():
        code = _code_key(name, repr(key))
        if code == 0:
            raise ReportError(f"bad report: exit code 0 listed as a failure in {key!r}")
        indexes = _set_field(text, f"{key!r} of exit code {code}")
        if indexes:
            result[code] = indexes
    return result


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
    failed = _sets_by_code(data, "fail")
    retried = _sets_by_code(data, "again")
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
    run_from = _int_field(data, "okfrom", 0)
    run_to = _int_field(data, "okto", 0)
    if (run_from is None) != (run_to is None):
        raise ReportError("bad report: 'okfrom' and 'okto' go together")
    if run_from is not None and run_to is not None:
        if run_to < run_from:
            raise ReportError(f"bad report: 'okto' ({run_to}) is before 'okfrom' ({run_from})")
        if run_to > run_from:
            # The live run (see the module doc): consecutive successes since the full encoding.
            run = IndexSet.from_range(run_from, run_to)
            if succeeded & run:
                raise ReportError("bad report: the live run repeats reported successes")
            succeeded = succeeded | run
            count = (count or 0) + run_to - run_from
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
        retried=retried,
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
    again = report.retried_indexes() - seen
    if again:
        raise ReportError(
            f"bad report: indexes {again.format_bounded(60)} retried without an outcome"
        )
    last = seen.last()
    if report.covered_through is not None and last is not None and last > report.covered_through:
        raise ReportError(
            f"bad report: outcome of index {last} reported beyond "
            f"covered_through {report.covered_through}"
        )
