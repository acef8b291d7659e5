"""The back room, one module per named stage of an event's way through the worker.

    webhook ─▶ webhooks.py (door) ─▶ queue ─▶ worker.handle_event
                                                  │
      order.take_turn ─ per-record order; defers by re-queueing
      links.bind      ─ Telegram chats and buttons bound to their CRM record (or answered here)
      snapshot.take   ─ the record read fresh, kept, and what changed (derived events)
      observers       ─ a connector learns from its own events (calls that ended in a talk)
      for each change:
        stages        ─ a stage move already handled (catch-up first, crmbridge's own undo)
        plan          ─ rules.engine matches and plans (no I/O); approvals claimed once
        timers.apply  ─ timers cancelled / set
        execute       ─ each step once: idempotency key, attempted/sent marks, retries,
                        steps (pipeline/steps) for behaviours of several calls
      resume          ─ a step with no rate-limit slot soon: the event re-queued with its
                        changes and plan, resumed where it stopped (retry.budget: time per run)
      order.done      ─ written with the job's audit entries (audit.batch); then the job's
                        decisions (every rule, why not, actions, timers) to history.py, outside Redis

    timer due ─▶ worker.fire_timer: timers.current ─ snapshot.read ─ plan_fired ─ execute ─ timers.reschedule
    catch-up  ─▶ worker.catch_up: catch_up.look ─ the webhooks' own intake path
    a job out of retries ─▶ dead_letters (replay with cli.py)
"""

# the record kinds a CRM keeps (read fresh, snapshotted, stage-tracked)
CRM_ENTITIES = frozenset({"lead", "deal", "contact", "company", "task", "customer", "activity"})
