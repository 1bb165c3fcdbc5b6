-- Several kiln replicas on one database: each registers itself with a heartbeat, and each host is driven by the
-- replica holding its lease. The epoch grows with every change of holder; the executor's writes for a host carry
-- the epoch they were decided under and are refused when it is no longer the host's (fencing).
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    heartbeat_ms BIGINT NOT NULL,
    started_ms BIGINT NOT NULL
);
CREATE TABLE host_leases (
    host_id BIGINT PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    replica TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX host_leases_replica ON host_leases (replica);
