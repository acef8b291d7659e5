"""The external systems crmbridge speaks to, by the `type` a connection names in connections.yaml."""
from connectors import amocrm, telegram

CONNECTORS = {
    "amocrm": amocrm,
    "telegram": telegram,
}
