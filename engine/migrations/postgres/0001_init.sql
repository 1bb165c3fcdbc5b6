-- kiln store, PostgreSQL dialect. Times are milliseconds since the Unix epoch; JSON is stored as TEXT.
CREATE TABLE hosts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    bmc_address TEXT,
    bmc_username TEXT,
    bmc_password TEXT, -- sealed with the data directory's key, never plaintext
    boot_mac TEXT UNIQUE,
    boot_mode TEXT NOT NULL,
    root_device_hints TEXT NOT NULL,
    image TEXT,
    user_data TEXT,
    network_data TEXT,
    meta_data TEXT,
    options TEXT NOT NULL,
    requests TEXT NOT NULL,
    state_name TEXT NOT NULL,
    state TEXT NOT NULL,
    error_kind TEXT,
    error_message TEXT,
    power TEXT,
    counters TEXT NOT NULL,
    generation BIGINT NOT NULL,
    next_wake_ms BIGINT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX hosts_state ON hosts (state_name);

CREATE TABLE inspections (
    host_id BIGINT PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    data TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);

CREATE TABLE phases (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_id BIGINT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    phase TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    outcome TEXT
);
CREATE INDEX phases_host ON phases (host_id, id);

CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_name TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_host ON events (host_name, id);

CREATE TABLE agent_tokens (
    token_hash TEXT PRIMARY KEY,
    host_id BIGINT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    boot BIGINT NOT NULL,
    phase TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX agent_tokens_host ON agent_tokens (host_id);

CREATE TABLE agent_boots (
    host_id BIGINT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    boot BIGINT NOT NULL,
    first_heartbeat_ms BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL,
    progress TEXT,
    PRIMARY KEY (host_id, boot)
);

CREATE TABLE agent_commands (
    host_id BIGINT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    boot BIGINT NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (host_id, id)
);
