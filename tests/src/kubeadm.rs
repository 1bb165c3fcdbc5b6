//! The tests' kube-apiserver made ready for real `kubeadm join`s from the lab's VMs, the way `kubeadm init` prepares a
//! control plane for joining nodes, with the real binaries (`tests/kube/build.sh` builds them at the same Kubernetes
//! version as the API server):
//! - kube-controller-manager with the controllers joining needs: the bootstrap signer (signs `cluster-info` for each
//!   bootstrap token, which is how `kubeadm join` trusts the API server), the token cleaner, and the CSR approver,
//!   signer and cleaner (the kubelet's TLS bootstrap), signing with the API server's CA;
//! - the real `kubeadm init phase` subcommands that publish what a joining node reads: `bootstrap-token` (the
//!   `cluster-info` ConfigMap with the endpoint and CA the VMs use, and the RBAC rules for bootstrap tokens),
//!   `upload-config kubeadm` (the ClusterConfiguration) and `upload-config kubelet` (the KubeletConfiguration).
//!
//! kubeadm runs inside the lab's namespace, so the `cluster-info` it publishes names the endpoint the VMs reach.

use std::path::PathBuf;
use std::process::Child;

use anyhow::{Context, bail};

use crate::kube::{KubeApiServer, bin_dir, k8s_version, spawn, stop, tail};
use crate::netns::Netns;
use crate::state::Record;

/// The control plane's endpoint as the lab's VMs reach it (the namespace bridge, [`KubeApiServer::bridge_into`]).
pub fn endpoint() -> String {
    format!("{}:6443", crate::operator::SERVER)
}

/// kube-controller-manager running against the server, plus the kubeadm-prepared cluster configuration.
pub struct JoinableControlPlane {
    kcm: Child,
    /// kube-controller-manager's log.
    pub log: PathBuf,
    _record: Record,
}

impl JoinableControlPlane {
    /// Starts kube-controller-manager and runs the `kubeadm init` phases inside `ns` (which must be bridged to the
    /// server). The cluster's pod network is `pod_cidr`.
    pub fn start(server: &KubeApiServer, ns: &Netns, pod_cidr: &str) -> anyhow::Result<Self> {
        let bin = bin_dir();
        for b in ["kube-controller-manager", "kubeadm"] {
            if !bin.join(b).is_file() {
                bail!(
                    "{} is missing: run `KILN_SETUP_KUBE=1 tests/setup.sh` (it runs tests/kube/build.sh)",
                    bin.join(b).display()
                );
            }
        }
        let record = Record::new()?;
        let d = server.dir().join("kubeadm");
        std::fs::create_dir_all(&d)?;
        let p = |f: &str| server.dir().join(f).display().to_string();
        let log = d.join("kube-controller-manager.log");
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", server.kubeconfig.display()),
            "--controllers=bootstrap-signer-controller,token-cleaner-controller,\
             certificatesigningrequest-approving-controller,certificatesigningrequest-signing-controller,\
             certificatesigningrequest-cleaner-controller"
                .into(),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", crate::free_port()),
            "--v=2".into(),
        ];
        let kcm = spawn(&bin.join("kube-controller-manager"), &args, &log, &record)?;
        let mut me = Self {
            kcm,
            log,
            _record: record,
        };

        // An admin kubeconfig naming the endpoint the VMs use, with the CA embedded: `bootstrap-token` copies its
        // cluster entry into `cluster-info`.
        let admin = d.join("admin.conf");
        std::fs::write(&admin, server.admin_kubeconfig(&format!("https://{}", endpoint())))?;
        let config = d.join("kubeadm.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nnodeRegistration:\n  name: kiln-test-apiserver\n  \
                 criSocket: unix:///run/containerd/containerd.sock\nlocalAPIEndpoint:\n  advertiseAddress: {server_ip}\n  \
                 bindPort: 6443\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n\
                 kubernetesVersion: {version}\nclusterName: kiln-test\ncontrolPlaneEndpoint: {endpoint}\n\
                 networking:\n  serviceSubnet: 10.96.0.0/24\n  podSubnet: {pod_cidr}\n---\n\
                 apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n",
                server_ip = crate::operator::SERVER,
                version = k8s_version(),
                endpoint = endpoint(),
            ),
        )?;
        for phase in [
            &["bootstrap-token", "--skip-token-print"][..],
            &["upload-config", "kubeadm"],
            &["upload-config", "kubelet"],
        ] {
            let out = ns
                .command(&bin.join("kubeadm").display().to_string())
                .args(["init", "phase"])
                .args(phase)
                .arg(format!("--config={}", config.display()))
                .arg(format!("--kubeconfig={}", admin.display()))
                .output()
                .context("run kubeadm")?;
            if !out.status.success() {
                let msg = format!(
                    "kubeadm init phase {}: {}{}",
                    phase.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                stop(&mut me.kcm);
                bail!(msg);
            }
        }
        Ok(me)
    }

    /// The last lines of kube-controller-manager's log.
    pub fn log_tail(&self) -> String {
        format!("--- {} ---\n{}", self.log.display(), tail(&self.log))
    }
}

impl Drop for JoinableControlPlane {
    fn drop(&mut self) {
        stop(&mut self.kcm);
    }
}
