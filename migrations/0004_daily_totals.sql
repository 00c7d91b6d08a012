-- Org-wide daily totals for analytics teams (projections/readmodels/daily.py): each session is
-- bucketed by the UTC day of its start. focus_daily_users holds the sums per (user, day) and
-- makes "active users" (distinct users with a session started that day) a sum;
-- focus_daily_totals holds one row per day. Added after the log already held history:
-- `focus replay` backfills both, the projector keeps them by deltas, `focus verify` checks them
-- against focus_sessions.
CREATE TABLE focus_daily_users (
    user_id VARCHAR(255) NOT NULL,
    day DATE NOT NULL,
    sessions_started BIGINT NOT NULL DEFAULT 0,
    sessions_ended BIGINT NOT NULL DEFAULT 0,
    sessions_completed BIGINT NOT NULL DEFAULT 0,
    focus_seconds NUMERIC(20, 6) NOT NULL DEFAULT 0,
    interruptions BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);

CREATE TABLE focus_daily_totals (
    day DATE PRIMARY KEY,
    active_users BIGINT NOT NULL DEFAULT 0,
    sessions_started BIGINT NOT NULL DEFAULT 0,
    sessions_ended BIGINT NOT NULL DEFAULT 0,
    sessions_completed BIGINT NOT NULL DEFAULT 0,
    focus_seconds NUMERIC(20, 6) NOT NULL DEFAULT 0,
    interruptions BIGINT NOT NULL DEFAULT 0
);
