-- Events the projector could not store although they passed validation (guarantee 4: a write
-- error caused by one event's data isolates that event, which goes to the dead-letter topic with
-- reason `unstorable`). Written in the same transaction as the batch's positions, so the record
-- is exactly-once; a replay reads it to skip the same events and so rebuild exactly the live
-- state (a replay never dies on an event the live projector dead-lettered). The swap carries the
-- rows over. Not a read model of the log: it records what this database could not hold.
CREATE TABLE unstorable_events (
    topic TEXT NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset BIGINT NOT NULL,
    event_id UUID,
    session_id UUID,
    detail TEXT NOT NULL,                    -- the database's message
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
