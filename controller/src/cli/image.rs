//! `kiln image ...`: admin commands on the same pipeline the agent runs, so an image can be tested before it is
//! deployed. `write` streams an image to a file or block device with a progress bar, `inspect` decodes without
//! writing and reports format, compression, size and digest, `configdrive` builds a `config-2` drive image.
//!
//! Thin: parsing and printing only; the work is in `kiln_images`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kiln_images::digest::ChecksumSource;
use kiln_images::pipeline::{self, WriteOptions, WriteReport};
use kiln_images::protocol::{ChecksumType, ConfigDrive, ImageFormat, RegistryAccess};
use kiln_images::{DirectIo, Progress};

/// `kiln image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// Declared disk format (default: detect from the bytes).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Write an image to a file or block device exactly as the agent would (decompress, decode qcow2, verify).
    Write {
        /// Local path, file://, http:// or https:// URL, or an `oci://` reference (verified by its registry digest).
        source: String,
        /// Block device or regular file (created or truncated).
        target: PathBuf,
        /// `sha256:HEX`, `sha512:HEX`, `md5:HEX`, bare hex, or the URL of a sha256sum-style file.
        #[arg(long)]
        checksum: Option<String>,
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// Bypass the page cache (O_DIRECT) for regular files too; block devices always use it.
        #[arg(long)]
        direct: bool,
        /// No progress bar (for logs and scripts).
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Decode an image without writing it: format, compression, virtual size and sha256 of the published bytes.
    Inspect {
        source: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Build an OpenStack config drive (VFAT, label config-2) image file.
    Configdrive {
        #[arg(long)]
        user_data: PathBuf,
        /// network_data.json
        #[arg(long)]
        network_data: Option<PathBuf>,
        /// meta_data.json (a uuid is added if missing)
        #[arg(long)]
        meta_data: Option<PathBuf>,
        out: PathBuf,
    },
}

/// How to reach the registry of an `oci://` source, as the agent is told.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// For an oci:// source: a docker config file (`~/.docker/config.json`, podman's `auth.json`) with the
    /// registry's credentials.
    #[arg(long)]
    registry_auth: Option<PathBuf>,
    /// For an oci:// source: speak plain HTTP to the registry (kiln's `insecure_registries`).
    #[arg(long)]
    plain_http: bool,
}

impl RegistryArgs {
    fn access(&self, source: &str) -> anyhow::Result<Option<RegistryAccess>> {
        if !source.starts_with(kiln_images::oci::SCHEME) {
            anyhow::ensure!(
                self.registry_auth.is_none() && !self.plain_http,
                "--registry-auth and --plain-http are for oci:// sources only"
            );
            return Ok(None);
        }
        let credentials = self
            .registry_auth
            .as_ref()
            .map(|p| super::registry_login(p, source))
            .transpose()?;
        Ok(Some(RegistryAccess {
            credentials,
            plain_http: self.plain_http,
        }))
    }
}

/// Runs a `kiln image` subcommand.
///
/// # Errors
/// Any pipeline or I/O failure, with its cause chain.
pub async fn run(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Write {
            source,
            target,
            checksum,
            format,
            direct,
            quiet,
            registry,
        } => {
            let access = registry.access(&source)?;
            let checksum = checksum
                .map(|c| ChecksumSource::parse(&c, ChecksumType::Auto))
                .transpose()?;
            if checksum.is_none() && access.is_none() {
                eprintln!("warning: no --checksum given; the image will not be verified");
            }
            let format = format.map(|f| match f {
                FormatArg::Raw => ImageFormat::Raw,
                FormatArg::Qcow2 => ImageFormat::Qcow2,
            });
            let opts = WriteOptions {
                direct: if direct { DirectIo::Always } else { DirectIo::Auto },
                client: None,
                registry: access,
            };
            let progress = Progress::new();
            let fut = pipeline::run(&source, checksum.as_ref(), format, Some(&target), &progress, &opts);
            let report = with_progress_bar(fut, &progress, quiet).await?;
            print_report(&report);
            Ok(())
        }
        ImageCommand::Inspect { source, registry } => {
            let access = registry.access(&source)?;
            let progress = Progress::new();
            let opts = WriteOptions {
                registry: access,
                ..WriteOptions::default()
            };
            let fut = pipeline::run(&source, None, None, None, &progress, &opts);
            let report = with_progress_bar(fut, &progress, true).await?;
            print_report(&report);
            Ok(())
        }
        ImageCommand::Configdrive {
            user_data,
            network_data,
            meta_data,
            out,
        } => {
            let read_json = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("parsing {} as JSON", p.display()))
            };
            let drive = ConfigDrive {
                meta_data: meta_data
                    .as_ref()
                    .map(read_json)
                    .transpose()?
                    .unwrap_or_else(|| serde_json::json!({})),
                user_data: Some(
                    std::fs::read_to_string(&user_data).with_context(|| format!("reading {}", user_data.display()))?,
                ),
                network_data: network_data.as_ref().map(read_json).transpose()?,
            };
            let image = kiln_images::configdrive::build_config_drive(&drive)?;
            std::fs::write(&out, &image).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "config drive: {} ({} bytes, label config-2)",
                out.display(),
                image.len()
            );
            Ok(())
        }
    }
}

async fn with_progress_bar(
    fut: impl Future<Output = Result<WriteReport, kiln_images::ImageError>>,
    progress: &Progress,
    quiet: bool,
) -> anyhow::Result<WriteReport> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg}")
            .expect("static template"),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(fut);
    let res = loop {
        tokio::select! {
            r = &mut fut => break r,
            _ = tick.tick() => {
                let s = progress.snapshot();
                if let Some(total) = s.source_size {
                    bar.set_length(total);
                }
                bar.set_position(s.bytes_read);
                bar.set_message(format!(
                    "{} written, {:.1} MB/s, {}",
                    indicatif::HumanBytes(s.bytes_written),
                    s.write_rate() / 1e6,
                    s.phase.as_str()
                ));
            }
        }
    };
    bar.finish_and_clear();
    Ok(res?)
}

fn print_report(r: &WriteReport) {
    if let Some(t) = &r.target {
        println!("target:       {}", t.display());
    }
    println!(
        "format:       {}",
        if r.format == ImageFormat::Qcow2 { "qcow2" } else { "raw" }
    );
    println!("compression:  {}", r.compression.name());
    println!("virtual size: {} bytes", r.image_size);
    println!("published:    {} bytes", r.bytes_read);
    println!(
        "digest:       {}{}",
        r.digest,
        if r.verified { " (verified)" } else { "" }
    );
    let secs = r.elapsed.as_secs_f64().max(1e-3);
    println!(
        "elapsed:      {secs:.2} s ({:.1} MB/s decoded)",
        r.image_size as f64 / secs / 1e6
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        image: ImageArgs,
    }

    #[tokio::test]
    async fn write_inspect_and_configdrive_commands_work_on_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("img.raw");
        std::fs::write(&src, vec![7u8; 3 << 20]).unwrap();
        let sum = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&src).unwrap()))
        };
        let out = dir.path().join("out.raw");
        let argv = [
            "kiln",
            "write",
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--checksum",
            &format!("sha256:{sum}"),
            "--quiet",
        ];
        run(Cli::parse_from(argv).image).await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
        let bad = [
            "kiln",
            "write",
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--checksum",
            &"0".repeat(64),
            "--quiet",
        ];
        let err = run(Cli::parse_from(bad).image).await.unwrap_err();
        assert!(format!("{err:#}").contains("checksum mismatch"), "{err:#}");
        run(Cli::parse_from(["kiln", "inspect", src.to_str().unwrap()]).image)
            .await
            .unwrap();

        let ud = dir.path().join("user-data");
        std::fs::write(&ud, "#cloud-config\n").unwrap();
        let cd = dir.path().join("cd.img");
        run(Cli::parse_from([
            "kiln",
            "configdrive",
            "--user-data",
            ud.to_str().unwrap(),
            cd.to_str().unwrap(),
        ])
        .image)
        .await
        .unwrap();
        let probe = std::process::Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&cd)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&probe.stdout).contains("LABEL=config-2"));
    }

    /// `kiln image write oci://...` against a real registry (Debian's docker-registry behind Basic authentication),
    /// with the credentials from a docker config file, as the agent pulls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_pulls_an_oci_image_with_docker_config_credentials() {
        use kiln_tests::registry::{self, Registry};
        let dir = tempfile::tempdir().unwrap();
        let (user, password) = ("puller", "pw-Reg1");
        let htpasswd = registry::htpasswd(dir.path(), &[(user, password)]).unwrap();
        let reg = Registry::on_loopback(&dir.path().join("registry"), &registry::htpasswd_auth(&htpasswd)).unwrap();
        let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
        let auth = oci_client::secrets::RegistryAuth::Basic(user.into(), password.into());
        registry::push_disk_image(&reg.host, "kiln/disk:v1", data.clone(), "disk.raw", "raw", &auth)
            .await
            .unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(&config, registry::docker_config(&reg.host, user, password)).unwrap();
        let source = format!("oci://{}/kiln/disk:v1", reg.host);
        let out = dir.path().join("out.raw");
        let write = |extra: &[&str]| {
            let mut argv = vec!["kiln", "write", source.as_str(), out.to_str().unwrap(), "--quiet"];
            argv.extend_from_slice(extra);
            Cli::parse_from(argv).image
        };
        let cfg = config.to_str().unwrap();
        run(write(&["--registry-auth", cfg, "--plain-http"])).await.unwrap();
        assert!(
            std::fs::read(&out).unwrap() == data,
            "the written bytes are the pushed image's"
        );
        // Without the credentials, or over HTTPS to this plain-HTTP registry: refused, naming the registry.
        for extra in [&["--plain-http"][..], &["--registry-auth", cfg][..]] {
            let err = run(write(extra)).await.unwrap_err();
            assert!(format!("{err:#}").contains("registry"), "{extra:?}: {err:#}");
        }
        // The registry flags are for oci:// sources only.
        let err = run(Cli::parse_from(["kiln", "inspect", out.to_str().unwrap(), "--plain-http"]).image)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("oci://"), "{err:#}");
    }
}
