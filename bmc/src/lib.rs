//! kiln-bmc: BMC addresses, the `Bmc` trait and its Redfish and IPMI (RMCP+) drivers.
