-- Read models of the focus-session projection. Everything here is rebuilt by replaying the
-- topic (`focus replay`); nothing is the source of truth except the Kafka log.

-- One row per session whose start is known. Columns, defaults and indexes of the original spec
-- (BE-03) are kept; times are TIMESTAMPTZ because every event carries a time zone, and the
-- spec's `REFERENCES micro_steps(step_id)` is dropped: micro_steps belongs to another service
-- and database, and a projection must never reject a fact because a row elsewhere is missing
-- (see README, "step_id has no foreign key").
CREATE TABLE focus_sessions (
    session_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id VARCHAR(255) NOT NULL,
    step_id UUID,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ,
    duration_minutes INT,
    completed BOOLEAN DEFAULT false,
    interruptions INT DEFAULT 0,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    -- added by the event-sourced design --
    focus_seconds NUMERIC(14, 6),            -- actual elapsed start->end; null until ended
    outcome TEXT,                            -- completed | abandoned | cancelled (ended.v2)
    focus_quality SMALLINT,                  -- 1-5, self-rated (ended.v2), null if not given
    interruption_events INT NOT NULL DEFAULT 0,
    reported_interruptions INT,              -- the timer's own count from the end event
    time_zone TEXT,
    start_event_id UUID NOT NULL,
    end_event_id UUID
);

CREATE INDEX idx_focus_user ON focus_sessions(user_id);
CREATE INDEX idx_focus_step ON focus_sessions(step_id);
-- "a user's recent sessions, newest first" and per-user ranges
CREATE INDEX idx_focus_user_started ON focus_sessions(user_id, started_at DESC, session_id DESC);

-- Every accepted event, reduced to its fields: the projector's memory of each session.
-- Dedupe (same id = same fact), held events (no start yet), superseded ends and contradictions
-- all live here, so the session row is always a pure function of this table.
CREATE TABLE session_events (
    session_id UUID NOT NULL,
    event_id UUID NOT NULL,
    user_id VARCHAR(255) NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('started', 'interrupted', 'ended')),
    status TEXT NOT NULL CHECK (status IN ('applied', 'held', 'superseded', 'contradiction')),
    occurred_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,       -- envelope `time`
    source TEXT NOT NULL,
    step_id UUID,
    duration_minutes INT,
    time_zone TEXT,
    reason TEXT,
    outcome TEXT,
    reported_interruptions INT,
    focus_quality SMALLINT,
    kafka_partition INT NOT NULL,
    kafka_offset BIGINT NOT NULL,
    PRIMARY KEY (session_id, event_id)
);
CREATE INDEX idx_session_events_pending ON session_events(status, recorded_at)
    WHERE status IN ('held', 'contradiction');

-- Per-user rollups. Averages and rates are derived at read time from these sums, so that a
-- rollup is always an exact aggregate of focus_sessions (`focus verify` checks it).
CREATE TABLE focus_user_stats (
    user_id VARCHAR(255) PRIMARY KEY,
    sessions_started BIGINT NOT NULL DEFAULT 0,
    sessions_ended BIGINT NOT NULL DEFAULT 0,
    sessions_completed BIGINT NOT NULL DEFAULT 0,
    total_focus_seconds NUMERIC(20, 6) NOT NULL DEFAULT 0,
    total_planned_minutes BIGINT NOT NULL DEFAULT 0,
    total_interruptions BIGINT NOT NULL DEFAULT 0,
    last_session_at TIMESTAMPTZ
);

-- Where the projector has got to, per partition, written in the same transaction as the rows.
-- Kafka's committed offsets are only a copy for lag tooling.
CREATE TABLE projector_positions (
    topic TEXT NOT NULL,
    kafka_partition INT NOT NULL,
    next_offset BIGINT NOT NULL,
    last_event_time TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (topic, kafka_partition)
);
