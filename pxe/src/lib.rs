//! kiln-pxe: the netboot services (DHCPv4 full and proxy, TFTP, iPXE scripts); asks a `HostLookup`, owns no inventory.
