"""The queue engine both pipelines run on: listen → claim → execute → record.

It names neither pipeline: a pipeline hands it a :class:`~.store.QueueSpec`
(its table, its claim, how its completions' writes are recorded) and a
:data:`~.jobs.Handler`. ``tests/unit/test_layers.py`` holds that: nothing here
imports the outbox, the webhooks or the mappings.
"""
