"""Amounts and dates the way Ukrainian and Russian documents write them.

    amount_in_words(Decimal("12345.67"), "uk", "UAH")
        → "Дванадцять тисяч триста сорок п'ять гривень 67 копійок"
    money(Decimal("12345.67"))  → "12 345,67"   (a no-break space between thousands)
    date_in_words(date(2027, 3, 5), "uk") → "«05» березня 2027 р."

The integer part is written in words with num2words (lang uk/ru) in the currency's grammatical
gender (гривня and копійка are feminine: "одна гривня", "дві гривні"; рубль is masculine), the
kopecks in figures, two digits, with the noun agreeing with them: the form accountants use on
invoices and acts ("… гривень 05 копійок"). num2words' own `to='currency'` is not used: it reads
an integer as kopecks (1 → "нуль гривень, одна копійка") and in Russian puts a feminine
currency's gender on millions too ("одна миллион гривен"); here the millions and thousands are
written apart from the last three digits, which alone take the currency's gender.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from num2words import num2words

LANGUAGES = ("uk", "ru")
# per currency: its gender, then the noun forms (one, two-four, five and more) per language, for the
# main unit and for the hundredth
CURRENCIES: dict[str, dict[str, Any]] = {
    "UAH": {"gender": "f", "cents_gender": "f",
            "uk": (("гривня", "гривні", "гривень"), ("копійка", "копійки", "копійок")),
            "ru": (("гривна", "гривны", "гривен"), ("копейка", "копейки", "копеек"))},
    "RUB": {"gender": "m", "cents_gender": "f",
            "uk": (("рубль", "рублі", "рублів"), ("копійка", "копійки", "копійок")),
            "ru": (("рубль", "рубля", "рублей"), ("копейка", "копейки", "копеек"))},
    "USD": {"gender": "m", "cents_gender": "m",
            "uk": (("долар США", "долари США", "доларів США"), ("цент", "центи", "центів")),
            "ru": (("доллар США", "доллара США", "долларов США"), ("цент", "цента", "центов"))},
    "EUR": {"gender": "m", "cents_gender": "m",
            "uk": (("євро", "євро", "євро"), ("цент", "центи", "центів")),
            "ru": (("евро", "евро", "евро"), ("цент", "цента", "центов"))},
}
MONTHS = {
    "uk": ("січня", "лютого", "березня", "квітня", "травня", "червня", "липня", "серпня", "вересня",
           "жовтня", "листопада", "грудня"),
    "ru": ("января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа", "сентября",
           "октября", "ноября", "декабря"),
}
YEAR_MARK = {"uk": ("р.", "року"), "ru": ("г.", "года")}
CENT = Decimal("0.01")


def amount(value: Any) -> Decimal:
    """A sum as a Decimal rounded to kopecks: 12, "12,5", "150 000.50", Decimal (ValueError if none)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an amount, found {value!r}")
    if isinstance(value, Decimal):
        found = value
    else:
        text = str(value if value is not None else "").replace("\u00a0", "").replace("\u202f", "").replace(" ", "")
        text = text.replace(",", "") if "," in text and "." in text else text.replace(",", ".")
        try:
            found = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"expected an amount, found {value!r}") from None
    if not found.is_finite():
        raise ValueError(f"expected an amount, found {value!r}")
    return found.quantize(CENT, rounding=ROUND_HALF_UP)


def plural(number: int, forms: tuple[str, str, str]) -> str:
    """The noun form after `number`: 1, 21 → one; 2-4, 22 → few; 0, 5-20, 11-14 → many."""
    n = abs(number) % 100
    if 11 <= n <= 14:
        return forms[2]
    n %= 10
    return forms[0] if n == 1 else forms[1] if 2 <= n <= 4 else forms[2]


def cardinal(number: int, lang: str, gender: str = "m") -> str:
    """`number` in words; only the last three digits take `gender` (thousands are feminine and
    millions masculine whatever they count)."""
    _language(lang)
    if number < 0:
        return f"{'мінус' if lang == 'uk' else 'минус'} {cardinal(-number, lang, gender)}"
    high, low = divmod(number, 1000)
    parts = [num2words(high * 1000, lang=lang)] if high else []
    if low or not high:
        parts.append(num2words(low, lang=lang, **_gender(lang, gender)))
    return " ".join(parts)


def amount_in_words(value: Any, lang: str, currency: str = "UAH", *, capital: bool = True) -> str:
    """"Дванадцять тисяч триста сорок п'ять гривень 67 копійок" (kopecks in figures)."""
    money_ = CURRENCIES.get(currency.upper())
    if money_ is None:
        raise ValueError(f"currency {currency!r}: expected one of {', '.join(CURRENCIES)}")
    total = amount(value)
    sign, total = ("", total) if total >= 0 else (("мінус " if lang == "uk" else "минус "), -total)
    whole, cents = int(total), int((total - int(total)) * 100)
    units, hundredths = money_[_language(lang)]
    text = (f"{sign}{cardinal(whole, lang, money_['gender'])} {plural(whole, units)} "
            f"{cents:02d} {plural(cents, hundredths)}")
    return text[:1].upper() + text[1:] if capital else text


def money(value: Any) -> str:
    """"12 345,67": thousands apart by a no-break space, a decimal comma, always two decimals."""
    total = amount(value)
    whole, _, cents = f"{abs(total):.2f}".partition(".")
    groups = []
    while whole:
        whole, groups = whole[:-3], [whole[-3:], *groups]
    return f"{'-' if total < 0 else ''}{chr(0xa0).join(groups)},{cents}"


def as_date(value: Any) -> date:
    """A date from a date, a datetime, an ISO text ("2027-03-05", "2027-03-05T10:00:00+02:00"),
    "05.03.2027", or unix seconds."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value).date()
    text = str(value or "").strip()
    try:
        if len(text) == 10 and text[2] == "." and text[5] == ".":
            return date(int(text[6:]), int(text[3:5]), int(text[:2]))
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except (ValueError, IndexError):
        raise ValueError(f"expected a date (2027-03-05 or 05.03.2027), found {value!r}") from None


def date_in_words(value: Any, lang: str, *, quoted: bool = True) -> str:
    """"«05» березня 2027 р." (quoted, as contracts date themselves) or "5 березня 2027 року"."""
    day = as_date(value)
    month = MONTHS[_language(lang)][day.month - 1]
    short, long = YEAR_MARK[lang]
    if quoted:
        return f"«{day.day:02d}» {month} {day.year} {short}"
    return f"{day.day} {month} {day.year} {long}"


def _language(lang: str) -> str:
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r}: expected one of {', '.join(LANGUAGES)}")
    return lang


def _gender(lang: str, gender: str) -> dict[str, str]:
    if gender != "f":
        return {}
    return {"gender": "feminine"} if lang == "uk" else {"gender": "f"}
