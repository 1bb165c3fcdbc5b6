-- NIC MACs a host's BMC reported (Redfish EthernetInterfaces), learned for hosts enrolled without a boot MAC (Metal3
-- allows that): netboot lookups find the host by any of them, as Ironic's ports do. A MAC belongs to one host.
CREATE TABLE host_macs (
    mac TEXT PRIMARY KEY,
    host_id BIGINT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE
);
CREATE INDEX host_macs_host ON host_macs (host_id);
