-- Weekly focus per user, in the user's time zone (the start event's `time_zone`, else UTC).
-- A session counts in the ISO week (Monday start) in which it started; only ended sessions
-- contribute, and a week whose ended count falls back to zero has no row. Added after the log
-- already held history: `focus replay` backfills it, the projector keeps it by deltas
-- (projections/weekly.py), `focus verify` checks it against focus_sessions.
CREATE TABLE focus_user_weekly (
    user_id VARCHAR(255) NOT NULL,
    week_start DATE NOT NULL,
    sessions_ended BIGINT NOT NULL DEFAULT 0,
    sessions_completed BIGINT NOT NULL DEFAULT 0,
    focus_seconds NUMERIC(20, 6) NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, week_start)
);
