"""The external systems crmbridge speaks to, by the `type` a connection names in connections.yaml."""
from connectors import amocrm, telegram
from connectors import bitrix24
from connectors import forms, planfix
from connectors import inbox
from connectors import email, webhook, zadarma
from connectors.intake import imap, jivo, tilda, webform
from connectors import viber
from connectors.sms import smsc, turbosms

CONNECTORS = {
    "amocrm": amocrm,
    "bitrix24": bitrix24,
    "telegram": telegram,
    "planfix": planfix,
    "forms": forms,
    "inbox": inbox,
    "email": email,
    "webhook": webhook,
    "zadarma": zadarma,
    "webform": webform, "tilda": tilda, "jivo": jivo, "imap": imap,   # lead intake (connectors/intake/)
    "viber": viber,
    "turbosms": turbosms,
    "smsc": smsc,
}
