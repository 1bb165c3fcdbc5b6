-- The network configuration of the agent ramdisk on a host booted by virtual media where no DHCP serves it (Metal3's
-- preprovisioningNetworkDataName): OpenStack network_data.json, sealed like network_data. NULL: the ramdisk uses DHCP.
ALTER TABLE hosts ADD COLUMN preprovisioning_network_data TEXT;
