//! Renders per-host iPXE scripts (pure): agent boot, local-disk chain, or nothing.

use crate::MacAddr;
use crate::lookup::{BootAction, BootHost};

/// The script for `host`, or `None` when there is nothing to boot (the endpoint answers 404).
///
/// Agent: `initrd=initramfs` on the kernel line names the image the way iPXE's EFI build hands it to the kernel's
/// EFI stub (without it UEFI boots end in "VFS: Unable to mount root fs"). Local disk: `sanboot --no-describe
/// --drive 0x80` boots the first BIOS disk where plain `exit` hangs on some firmware, then `exit` for the rest.
pub fn render(mac: MacAddr, host: &BootHost) -> Option<String> {
    let name = host.hostname.as_deref().unwrap_or("unnamed");
    match &host.action {
        BootAction::Agent {
            kernel_url,
            initrd_url,
            cmdline,
        } => Some(format!(
            "#!ipxe\n\
             echo kiln: booting agent on {name} ({mac}) platform=${{platform}}\n\
             kernel {kernel_url} initrd=initramfs {cmdline} || goto failed\n\
             initrd --name initramfs {initrd_url} || goto failed\n\
             boot || goto failed\n\
             :failed\n\
             echo kiln: agent boot failed, retrying in 10 s\n\
             sleep 10\n\
             reboot\n",
            cmdline = sanitize(cmdline),
        )),
        BootAction::LocalDisk => Some(format!(
            "#!ipxe\n\
             echo kiln: booting local disk on {name} ({mac})\n\
             sanboot --no-describe --drive 0x80 || exit\n"
        )),
        BootAction::Nothing => None,
    }
}

/// Keeps the command line on one script line (newlines would start new iPXE commands).
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        "52:54:00:12:34:56".parse().unwrap()
    }

    #[test]
    fn agent_script_has_named_initrd() {
        let h = BootHost {
            ipv4: None,
            hostname: Some("n1".into()),
            action: BootAction::Agent {
                kernel_url: "http://10.0.0.1:8080/boot/files/vmlinuz".parse().unwrap(),
                initrd_url: "http://10.0.0.1:8080/boot/files/initramfs".parse().unwrap(),
                cmdline: "console=ttyS0 kiln.token=abc\nreboot".into(),
            },
        };
        let s = render(mac(), &h).unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.0.0.1:8080/boot/files/vmlinuz initrd=initramfs console=ttyS0 kiln.token=abc reboot || goto failed\n"));
        assert!(s.contains("initrd --name initramfs http://10.0.0.1:8080/boot/files/initramfs"));
    }

    #[test]
    fn local_disk_and_nothing() {
        let h = BootHost {
            ipv4: None,
            hostname: None,
            action: BootAction::LocalDisk,
        };
        assert!(
            render(mac(), &h)
                .unwrap()
                .contains("sanboot --no-describe --drive 0x80 || exit\n")
        );
        let h = BootHost {
            ipv4: None,
            hostname: None,
            action: BootAction::Nothing,
        };
        assert_eq!(render(mac(), &h), None);
    }
}
