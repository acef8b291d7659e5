"""SMS: TurboSMS and SMSC.ru behind one send_sms verb against local fakes speaking their formats;
numbers normalised with phonenumbers; GSM-7 / UCS-2 parts; a send without a clear answer looked up
by our own id (SMSC) or left uncertain (TurboSMS), never resent blindly."""
from __future__ import annotations

import pytest

from connectors.base import (
    Connection, PermanentApiError, RawWebhook, RecipientUnreachable, RetryableApiError, Unauthorized,
    UncertainApiError, WebhookError,
)
from connectors.sms import smsc, turbosms
from pipeline.steps import STEPS, StepContext
from pipeline.steps.send_sms import sms_ident
from sms_text import BadNumber, e164, segments
from tests.fakes_sms import FakeSMSC, FakeTurboSMS


# --- text and numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Your order is ready", ("GSM-7", 19, 1)),
    ("x" * 160, ("GSM-7", 160, 1)),
    ("x" * 161, ("GSM-7", 161, 2)),               # 153 a part once split
    ("x" * 306, ("GSM-7", 306, 2)),
    ("x" * 307, ("GSM-7", 307, 3)),
    ("€" * 80, ("GSM-7", 160, 1)),                # the extension table takes two septets
    ("Ваше замовлення готове", ("UCS-2", 22, 1)),
    ("я" * 70, ("UCS-2", 70, 1)),
    ("я" * 71, ("UCS-2", 71, 2)),                 # 67 a part once split
    ("я" * 134, ("UCS-2", 134, 2)),
    ("я" * 135, ("UCS-2", 135, 3)),
    ("Order ready 🎂", ("UCS-2", 14, 1)),         # an emoji is two UTF-16 units
])
def test_encoding_and_parts(text, expected):
    found = segments(text)
    assert (found.encoding, found.length, found.parts) == expected


@pytest.mark.parametrize("written, region, expected", [
    ("067 123 45 67", "UA", "+380671234567"),
    ("+38 (067) 123-45-67", "RU", "+380671234567"),
    ("380671234567", None, None),                 # no plus and no region: not readable
    ("8 912 345-67-89", "RU", "+79123456789"),
    ("+7 912 345 67 89", "UA", "+79123456789"),
])
def test_numbers_are_normalised_to_e164(written, region, expected):
    if expected is None:
        with pytest.raises(BadNumber):
            e164(written, region)
    else:
        assert e164(written, region) == expected


@pytest.mark.parametrize("bad", ["", "12", "+380 44 123 45 67", "not a number"])
def test_invalid_or_landline_numbers_are_refused(bad):
    with pytest.raises(BadNumber):
        e164(bad, "UA")


# --- TurboSMS ---------------------------------------------------------------------------------------

@pytest.fixture
def turbo():
    server = FakeTurboSMS().start()
    yield server
    server.stop()


def turbo_client(server, token="turbo-token", **options):
    return turbosms.Client(Connection(name="sms-ua", type="turbosms", base_url=server.url,
                                      credentials={"token": token}, options={"sender": "Romashka", **options}))


def test_turbosms_send_is_the_documented_json_with_a_bearer_token(turbo):
    sent = turbo_client(turbo).send_sms("067 123 45 67", "Ваше замовлення готове")
    [call] = turbo.received("POST", "/message/send.json")
    assert call.headers["Authorization"] == "Bearer turbo-token"
    assert call.body == {"recipients": ["380671234567"], "sms": {"sender": "Romashka", "text": "Ваше замовлення готове"}}
    assert sent["message_id"] and sent["phone"] == "+380671234567" and sent["status"] == "SUCCESS_MESSAGE_ACCEPTED"


def test_turbosms_answer_codes(turbo):
    turbo.stop_list.add("380671234567")
    with pytest.raises(RecipientUnreachable, match="404 NOT_ALLOWED_NUMBER_STOPLIST"):
        turbo_client(turbo).send_sms("+380671234567", "hi")
    with pytest.raises(PermanentApiError, match="105 REQUIRED_AUTH.*credentials.token"):
        turbo_client(turbo, token="wrong").send_sms("+380501112233", "hi")
    turbo.fail("/message/send.json", 200, {"response_code": 503, "response_status": "FAILED_SMS_SEND"})
    with pytest.raises(RetryableApiError) as not_sent:
        turbo_client(turbo).send_sms("+380501112233", "hi")
    assert not isinstance(not_sent.value, UncertainApiError)
    turbo.fail("/message/send.json", 200, {"response_code": 999, "response_status": "FATAL_ERROR"})
    with pytest.raises(UncertainApiError):
        turbo_client(turbo).send_sms("+380501112233", "hi")
    turbo.fail("/message/send.json", 502, b"Bad Gateway", applied=True)
    with pytest.raises(UncertainApiError):
        turbo_client(turbo).send_sms("+380501112233", "hi")
    with pytest.raises(PermanentApiError, match="options.sender"):
        turbosms.Client(Connection(name="s", type="turbosms", base_url=turbo.url,
                                   credentials={"token": "turbo-token"})).send_sms("+380501112233", "hi")


def test_numbers_and_lengths_are_checked_before_anything_leaves(turbo):
    with pytest.raises(PermanentApiError, match="not a valid phone number"):
        turbo_client(turbo).send_sms("123", "hi")
    with pytest.raises(PermanentApiError, match="8 parts"):
        turbo_client(turbo).send_sms("+380501112233", "я" * 500)
    assert turbo.calls == []


# --- SMSC -------------------------------------------------------------------------------------------

@pytest.fixture
def center():
    server = FakeSMSC().start()
    yield server
    server.stop()


def smsc_client(server, password="smsc-pass"):
    return smsc.Client(Connection(name="sms-ru", type="smsc", base_url=server.url,
                                  credentials={"login": "agency", "password": password},
                                  options={"sender": "Romashka", "region": "RU"}))


def test_smsc_send_is_a_form_post_under_our_id_and_its_status_is_read_by_it(center):
    client = smsc_client(center)
    sent = client.send_sms("8 912 345-67-89", "Заказ готов", ident="a1b2c3")
    [call] = center.received("POST", "/sys/send.php")
    assert call.body == {"login": "agency", "psw": "smsc-pass", "fmt": "3", "charset": "utf-8",
                         "phones": "79123456789", "mes": "Заказ готов", "id": "a1b2c3", "sender": "Romashka"}
    assert sent == {"provider": "smsc", "ident": "a1b2c3", "phone": "+79123456789", "parts": 1}
    assert client.sms_status("+79123456789", "a1b2c3")["status"] == "delivered"
    assert client.sms_status("+79123456789", "never-sent") is None


def test_smsc_errors(center):
    with pytest.raises(PermanentApiError, match="error 2 wrong login or password"):
        smsc_client(center, password="wrong").send_sms("+79123456789", "x")
    center.fail("/sys/send.php", 200, {"error": "duplicate", "error_code": 9})
    with pytest.raises(RetryableApiError, match="identical request") as refused:
        smsc_client(center).send_sms("+79123456789", "x")
    assert refused.value.retry_after == 60.0
    center.fail("/sys/send.php", 200, {"error": "cannot deliver", "error_code": 8})
    with pytest.raises(RecipientUnreachable):
        smsc_client(center).send_sms("+79123456789", "x")


def test_a_send_without_a_clear_answer_is_looked_up_by_our_id(center, redis_db):
    class Rt:   # what the step reads of the runtime: nothing but the client here
        pass
    step = STEPS["send_sms"]
    ctx = StepContext(rt=Rt(), client=smsc_client(center), key="evt-1|rule|0", connection="sms-ru")
    center.fail("/sys/send.php", 0, b"", reset=True)           # SMSC took it, the answer was lost
    done = step.run(ctx, phone="+79123456789", text="Заказ готов")
    assert done["reconciled"] is True and done["status"] == "delivered" and done["ident"] == sms_ident(ctx.key)
    assert len(center.messages) == 1                            # sent once, not twice
    center.fail("/sys/send.php", 500, {"error": "internal"})   # refused before taking it: not found → uncertain
    ctx2 = StepContext(rt=Rt(), client=smsc_client(center), key="evt-2|rule|0", connection="sms-ru")
    with pytest.raises(UncertainApiError):
        step.run(ctx2, phone="+79123456789", text="Заказ готов")
    assert len(center.messages) == 1


def test_turbosms_cannot_look_up_so_an_unclear_send_stays_uncertain(turbo):
    ctx = StepContext(rt=None, client=turbo_client(turbo), key="evt-3|rule|0", connection="sms-ua")
    turbo.fail("/message/send.json", 0, b"", reset=True)
    with pytest.raises(UncertainApiError):
        STEPS["send_sms"].run(ctx, phone="+380671234567", text="Готово")
    assert len(turbo.messages) == 1


def test_the_webhook_of_an_sms_connection_checks_its_token_and_reads_nothing():
    conn = Connection(name="sms-ua", type="turbosms", webhook_secret="s3cret")
    raw = RawWebhook(headers={}, content_type="application/json", body=b"{}", query={"token": "bad"})
    with pytest.raises(Unauthorized):
        turbosms.verify(raw, conn)
    with pytest.raises(WebhookError) as refused:
        turbosms.parse(RawWebhook(headers={}, content_type="application/json", body=b"{}", query={"token": "s3cret"}), conn)
    assert refused.value.status == 400
