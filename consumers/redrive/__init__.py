"""``focus dlq``: read the dead-letter topic, and redrive letters back to the events topic.

``letters`` (a letter parsed from its headers, filters) and ``plan`` (what a redrive sends and
why it skips the rest) are pure; ``ledger`` keeps the runs and the letters they sent in
PostgreSQL; ``redriver`` reads the topic, publishes and paces. Workflow: ``docs/dlq.md``.
"""
