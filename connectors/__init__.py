"""The external systems crmbridge speaks to, by the `type` a connection names in connections.yaml."""
from connectors import amocrm, bitrix24, telegram

CONNECTORS = {
    "amocrm": amocrm,
    "bitrix24": bitrix24,
    "telegram": telegram,
}
