-- The executor counts the hosts running a job on every pass: a partial index holds just those, so the count reads a
-- few rows instead of scanning every host (30,000 hosts at rest: a scan of all of them per pass, before).
CREATE INDEX hosts_running_jobs ON hosts (id)
    WHERE state_name IN ('inspecting', 'preparing', 'provisioning', 'deprovisioning');
