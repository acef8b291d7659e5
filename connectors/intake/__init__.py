"""Lead intake: the doors a new client comes in by, each read into one common lead shape.

    webform   any form builder's POST (form-encoded or JSON) with a field map   (webform.py)
    tilda     Tilda's form webhook: Name/Phone/Email, tranid, formid; `test=test` (tilda.py)
    jivo      Jivo's chat webhooks: offline_message, chat_finished                (jivo.py)
    imap      the sales mailbox, read over IMAP by the worker (pipeline/mailbox.py) (imap.py)

Every door puts the same keys into the event's `data` (leads.py `lead()`): name, phone (E.164 by
`phonenumbers`), phone_raw, email (case-folded), text, source {door, connection, form, page},
utm {source, medium, campaign, content, term}, so one rule file handles them all
(config/examples/lead-intake/, docs/connectors/lead-intake.md).
"""
