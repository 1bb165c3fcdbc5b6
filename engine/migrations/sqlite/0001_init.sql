-- kiln store, SQLite dialect. Times are milliseconds since the Unix epoch; JSON is stored as TEXT.
CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    generation INTEGER NOT NULL,
    next_wake_ms INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX hosts_state ON hosts (state_name);

CREATE TABLE inspections (
    host_id INTEGER PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    data TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);

CREATE TABLE phases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    phase TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    outcome TEXT
);
CREATE INDEX phases_host ON phases (host_id, id);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_name TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_host ON events (host_name, id);

CREATE TABLE agent_tokens (
    token_hash TEXT PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    boot INTEGER NOT NULL,
    phase TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX agent_tokens_host ON agent_tokens (host_id);

CREATE TABLE agent_boots (
    host_id INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    boot INTEGER NOT NULL,
    first_heartbeat_ms INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL,
    progress TEXT,
    PRIMARY KEY (host_id, boot)
);

CREATE TABLE agent_commands (
    host_id INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    id INTEGER NOT NULL,
    boot INTEGER NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (host_id, id)
);
