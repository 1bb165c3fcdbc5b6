-- The executor asks for the hosts due now (next_wake_ms at or before now) instead of reading every host on each
-- pass: a fleet at rest costs a probe of this index, not a scan.
CREATE INDEX hosts_next_wake ON hosts (next_wake_ms);
