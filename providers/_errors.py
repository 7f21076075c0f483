"""Error classification shared by the adapters: HTTP statuses, Z.ai business codes, Retry-After.

Z.ai answers with its business codes on both of its endpoints (OpenAI-compatible and
Anthropic-compatible), so both adapters consult ``ZAI_CODES``. Sources: Z.ai's error code
reference (https://docs.z.ai/api-reference/api-code, English) and BigModel's
(https://docs.bigmodel.cn/cn/api/api-code, which lists 1302-1313 with their texts), and the
reports in tests/fixtures/wire/QUIRKS.md; 1261 is reported by third parties, not in the reference.
1316-1321 are quota and plan codes named in our failover issue's list; the references we could
read stop at 1313, so their descriptions here are generic.

Three kinds of failure: retryable (a retry, then the next target, may cure it), final (the next
target may answer, this one will not), and *quota* (``QUOTA_CODES``: the account's balance, plan
or usage window is spent: no retry, the next target at once, and the target cools down until the
reset the body gives, when it gives one: 1308 and 1310 say "reset at YYYY-MM-DD HH:MM:SS").
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import Mapping

from router.errors import UpstreamHTTPError

__all__ = ["CONTENT_FILTER_CODES", "QUOTA_CODES", "RETRYABLE_STATUS", "ZAI_CODES", "http_error", "parse_reset",
           "parse_retry_after", "safe_code"]

# HTTP statuses worth another try: timeouts, rate limits, server-side failures, Anthropic 529.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})

# code: (description, retryable, context_overflow)
ZAI_CODES: dict[str, tuple[str, bool, bool]] = {
    "1000": ("authentication failed", False, False),
    "1001": ("no authentication header", False, False),
    "1002": ("invalid token", False, False),
    "1003": ("token expired", False, False),
    "1004": ("token rejected", False, False),
    "1110": ("account inactive", False, False),
    "1111": ("account does not exist", False, False),
    "1112": ("account locked", False, False),
    "1113": ("insufficient balance", False, False),
    "1120": ("account unreachable", False, False),
    "1121": ("account locked for irregular activity", False, False),
    "1210": ("bad request parameters", False, False),
    "1211": ("unknown model", False, False),
    "1213": ("missing field", False, False),
    "1214": ("invalid field (e.g. a tool message without type function)", False, False),
    "1220": ("no permission for this API", False, False),
    "1221": ("API offline", False, False),
    "1230": ("processing error", True, False),
    "1234": ("network error", True, False),
    "1261": ("prompt exceeds the model's max length", False, True),
    "1300": ("request blocked", False, False),
    "1301": ("unsafe or sensitive content", False, False),
    "1302": ("concurrency too high", True, False),
    "1303": ("request frequency too high", True, False),
    "1304": ("daily call limit reached", False, False),
    "1305": ("service overloaded", True, False),
    "1308": ("usage limit reached for the window", False, False),
    "1309": ("GLM Coding Plan expired", False, False),
    "1310": ("weekly or monthly usage limit reached", False, False),
    "1311": ("the plan does not include this model", False, False),
    "1312": ("the model is overloaded", True, False),
    "1313": ("fair-use policy: request frequency limited", False, False),
    **{str(c): ("quota or plan limit", False, False) for c in range(1316, 1322)},
}

# The account's balance, plan or usage window is spent: skip the target without a retry and cool
# it until the reset the body gives. 1113 arrears, 1304 daily limit, 1308-1313 plan and usage
# windows (1312, overload, is retryable and not here), 1316-1321; Anthropic's 402 billing_error
# (https://docs.anthropic.com/en/api/errors).
QUOTA_CODES = frozenset({"1113", "1304", "1308", "1309", "1310", "1311", "1313",
                         *(str(c) for c in range(1316, 1322)), "billing_error"})

# "Your limit will reset at 2026-03-06 22:19:54" (1310, seen in a public report) and
# "您的限额将在 ${next_flush_time} 重置" (1308, BigModel's reference): a local time with no zone.
# Read as UTC+8 (the provider's zone): if it is really UTC, the target is tried 8 hours early,
# fails once more with the same code and cools again; the other way round it would sit idle 8
# hours after its reset.
_RESET = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})")
_PROVIDER_TZ = 8 * 3600

# A provider's content filter refused the request: Z.ai 1301 (https://docs.z.ai/api-reference/api-code),
# OpenAI's content_policy_violation (https://platform.openai.com/docs/guides/error-codes) and
# content_filter (Azure OpenAI's error code). Never retried; not routed around unless the task says so.
CONTENT_FILTER_CODES = frozenset({"1301", "content_policy_violation", "content_filter"})

_SAFE_CODE = re.compile(r"[^A-Za-z0-9_.:-]")
_CONTEXT_WORDS = re.compile(r"context|too long|max(imum)? length|prompt is too long", re.IGNORECASE)


def safe_code(code: object) -> str:
    """A provider code as a short printable token (never upstream free text)."""
    return _SAFE_CODE.sub("", str(code))[:48]


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date).

    Returns ``None`` when neither header is present or parseable; never negative.
    (RFC 9110 section 10.2.3; ``retry-after-ms`` is sent by OpenAI-compatible servers.)
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_reset(message: str) -> float | None:
    """The quota reset a Z.ai message names, as epoch seconds (None when it names none)."""
    m = _RESET.search(message)
    if m is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return when.timestamp() - _PROVIDER_TZ


def http_error(status: int, code: str | None, upstream_message: str, *,
               retry_after: float | None, should_retry: bool | None = None) -> UpstreamHTTPError:
    """Classify one HTTP error answer.

    ``code``: a Z.ai business code (``"1113"``) or the provider's error type/code; a Z.ai code
    decides retryability over the status (1113 comes with 429 yet is final). ``upstream_message``
    is read for context-overflow hints only; it is never copied into the error. ``should_retry``:
    Anthropic's ``x-should-retry`` header when sent.
    """
    code = safe_code(code) if code else str(status)
    if code in ZAI_CODES:
        desc, retryable, overflow = ZAI_CODES[code]
        if code == "1210" and _CONTEXT_WORDS.search(upstream_message):
            overflow = True
        msg = f"upstream answered HTTP {status}, code {code}: {desc}"
    else:
        retryable = status in RETRYABLE_STATUS
        overflow = status in (400, 413) and bool(_CONTEXT_WORDS.search(upstream_message)) or \
            code == "context_length_exceeded"
        msg = f"upstream answered HTTP {status}" + (f" ({code})" if code != str(status) else "")
        if should_retry is not None:
            retryable = should_retry
    blocked = code in CONTENT_FILTER_CODES
    quota = code in QUOTA_CODES or (status == 402 and code == "402")
    reset_at = None
    if quota:
        retryable = False
        reset_at = parse_reset(upstream_message)
    return UpstreamHTTPError(msg, code=code, retryable=retryable and not blocked, upstream_status=status,
                             retry_after=retry_after, context_overflow=overflow, content_filter=blocked,
                             quota=quota, reset_at=reset_at)
