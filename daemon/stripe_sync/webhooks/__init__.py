"""Stripe → MC: the webhook half.

- ``endpoint``: POST /webhooks/stripe verifies the signature and stores the
  event (``ingest``: group commit), answering 200 only once it has committed.
- ``execute``: the queue handler (``make_handler(WebhookContext(...))``) that
  dispatches stored events by type to ``customers``, ``catalog``,
  ``subscriptions``, ``invoices``, ``payments``, ``disputes``,
  ``payment_methods``, ``credit_notes`` and ``checkout`` (each an
  ``EventHandler``); ``common`` holds the ordering rules (see its docstring)
  and the sequences the handlers share, ``events`` what is read from events
  of any API version.
"""
