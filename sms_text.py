"""An SMS's text and number as the networks count them: shared by the send_sms verb (its plan, shown
in dry runs) and the SMS connectors (connectors/sms), which import nothing of the rules.

Encoding (3GPP TS 23.038): a text whose every character is in the GSM 7-bit default alphabet (or
its extension table, which takes two septets: ^ { } \\ [ ] ~ | €) goes as GSM-7, 160 septets in one
part, 153 a part when split (the 7 others carry the concatenation header, TS 23.040 §9.2.3.24.1);
any other character (Cyrillic, emoji) makes the whole text UCS-2: 70 UTF-16 code units in one part,
67 a part when split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import phonenumbers

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = frozenset("^{}\\[]~|€\f")
SINGLE = {"GSM-7": 160, "UCS-2": 70}
PART = {"GSM-7": 153, "UCS-2": 67}


@dataclass(frozen=True)
class Segments:
    encoding: str      # "GSM-7" or "UCS-2"
    length: int        # septets (GSM-7) or UTF-16 code units (UCS-2)
    parts: int

    def describe(self) -> str:
        return f"{self.encoding}, {self.length} of {SINGLE[self.encoding]} a part, {self.parts} part(s)"


def segments(text: str) -> Segments:
    """How the text is encoded and into how many parts it is split."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        encoding = "GSM-7"
        length = sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    else:
        encoding = "UCS-2"
        length = len(text.encode("utf-16-le")) // 2
    parts = 1 if length <= SINGLE[encoding] else math.ceil(length / PART[encoding])
    return Segments(encoding, length, max(parts, 1))


class BadNumber(ValueError):
    """A phone number that is not a possible, valid number."""


def e164(number: object, region: str | None = "UA") -> str:
    """A phone number as E.164 (+380671234567), read with `region` when it has no country code
    (067 123 45 67 in UA, 8 912 345-67-89 in RU). BadNumber when it is no valid mobile-capable number."""
    text = str(number or "").strip()
    if not text:
        raise BadNumber("the phone number is empty")
    try:
        parsed = phonenumbers.parse(text, (region or "").upper() or None)
    except phonenumbers.NumberParseException as exc:
        raise BadNumber(f"{text[:40]!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(parsed):
        raise BadNumber(f"{text[:40]!r} is not a valid phone number"
                        + (f" for region {region}" if region and not text.startswith("+") else ""))
    kind = phonenumbers.number_type(parsed)
    if kind not in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        raise BadNumber(f"{text[:40]!r} is not a mobile number (an SMS cannot reach it)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
