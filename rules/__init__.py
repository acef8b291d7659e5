"""Rule modules, by the verb a rule file writes under `do:`."""
from rules import add_note, answer_button, create_task, edit_buttons, move_to_stage, send_message, set_fields

MODULES = {m.NAME: m for m in (create_task, send_message, move_to_stage, add_note, set_fields,
                               answer_button, edit_buttons)}
