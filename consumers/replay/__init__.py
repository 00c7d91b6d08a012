"""``focus replay``: rebuild every read model from the log into shadow tables, diff, swap.

One package, one concern per module:

- :mod:`.replayer` — ``Replayer``: the phases (bulk, catch-up, diff, swap) and their report;
- :mod:`.pool` — starts the bulk workers, deals partitions, merges what they return;
- :mod:`.bulk` — one bulk worker: reads its partitions from offset 0, folds in memory, COPYs;
- :mod:`.memory` — the in-memory fold of a whole log (pure): histories, rows, rollups;
- :mod:`.follow` — log end offsets, and the catch-up on the live projector's own code path;
- :mod:`.compare` — shadow against live: counts, differing keys, examples;
- :mod:`.shadow_sql` — SQL of the shadow schema: positions, indexes, locks, the swap.

The CLI (``focus_sessions/cli_replay.py``) only parses options and draws progress.
"""
