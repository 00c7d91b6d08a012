-- Dead-letter redrive (`focus dlq redrive`, focus_sessions.consumers.redrive): its runs, and a
-- ledger of the letters each run published back to the events topic.
--
-- In a schema of its own, whatever schema the migrations go into: it records what operators
-- did, not a read model of the log, so a replay must neither rebuild nor swap it (a replay
-- migrates a shadow schema and swaps every table in it: a ledger there would replace the live
-- one with an empty one, and letters already redriven would go again). IF NOT EXISTS: the
-- shadow schema's run of this file finds it made.
--
-- One run at a time per dead-letter topic (an advisory lock held for the run; a row of state
-- 'running' whose lock is free is a run that crashed, marked 'interrupted' by the next one).
CREATE SCHEMA IF NOT EXISTS dlq_redrive;

CREATE TABLE IF NOT EXISTS dlq_redrive.runs (
    run_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dlq_topic TEXT NOT NULL,
    events_topic TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'finished', 'interrupted')),
    options TEXT NOT NULL,                   -- filters and limits as given (JSON)
    planned INT NOT NULL DEFAULT 0,          -- letters the run meant to send
    sent INT NOT NULL DEFAULT 0,             -- letters the broker acknowledged
    host TEXT NOT NULL,
    pid INT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at TIMESTAMPTZ
);

-- One row per letter ever redriven, by its place in the dead-letter topic. Written 'sending'
-- (committed) before the letter is published and 'sent' once the broker acknowledged it: after
-- a crash, 'sent' letters are never published again, and only 'sending' ones (the chunk in
-- flight) may be published once more; the event keeps its id, so it still counts once.
CREATE TABLE IF NOT EXISTS dlq_redrive.letters (
    dlq_topic TEXT NOT NULL,
    dlq_partition INT NOT NULL,
    dlq_offset BIGINT NOT NULL,
    run_id BIGINT NOT NULL REFERENCES dlq_redrive.runs (run_id),
    original_sha256 TEXT NOT NULL,           -- the loop guard counts redrives of these bytes
    event_id TEXT,                           -- the event's id, when its bytes parse
    redrive_count INT NOT NULL,              -- the focus.redrive.count header it was sent with
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent')),
    events_partition INT,                    -- where the broker put it, once acknowledged
    events_offset BIGINT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX IF NOT EXISTS letters_by_bytes ON dlq_redrive.letters (dlq_topic, original_sha256);
