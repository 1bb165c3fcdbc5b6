-- Per-host BMC TLS settings (JSON) and the BMC identity (protocol|host:port|System) of each host; two hosts never
-- drive one machine. Rows written before this migration keep NULL until their spec is next written.
ALTER TABLE hosts ADD COLUMN bmc_tls TEXT;
ALTER TABLE hosts ADD COLUMN bmc_identity TEXT;
CREATE UNIQUE INDEX hosts_bmc_identity ON hosts (bmc_identity);
-- Agent tokens: minted once per agent boot by the state machine, the token itself kept sealed (AES-GCM, the data
-- directory's key) until the first iPXE script fetch of that boot hands it out (then NULL); tokens of a boot that
-- is over are deleted rather than marked.
ALTER TABLE agent_tokens ADD COLUMN handout TEXT;
DELETE FROM agent_tokens WHERE revoked = 1;
