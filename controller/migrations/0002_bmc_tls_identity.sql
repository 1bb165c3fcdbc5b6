-- Per-host BMC TLS settings (JSON) and the BMC identity (protocol|host:port|System) of each host; two hosts never
-- drive one machine. Rows written before this migration keep NULL until their spec is next written.
ALTER TABLE hosts ADD COLUMN bmc_tls TEXT;
ALTER TABLE hosts ADD COLUMN bmc_identity TEXT;
CREATE UNIQUE INDEX hosts_bmc_identity ON hosts (bmc_identity);
