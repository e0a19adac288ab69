//! Benchmark of the CSI node plugin against the targets of its issue, on
//! real loop devices: its resident memory at rest, NodeStageVolume of an
//! already formatted device, and how soon a hotplugged disk that appears
//! while NodeStageVolume waits for it is seen (inotify, not a poll): a
//! block volume's NodeStageVolume only finds the disk, so the time from the
//! disk's by-id link appearing to the call returning is that latency.
//!
//! The plugin runs as the real `kubevirt-csi-driver` process in node mode,
//! reading its Node from a lab guest cluster. Needs root (losetup, mount).
//!
//!     cargo build --release -p kubevirt-csi-driver
//!     cargo run --release -p kubevirt-lab --example node_bench [-- --rounds N --json]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use kubevirt_csi_proto::v1::identity_client::IdentityClient;
use kubevirt_csi_proto::v1::node_client::NodeClient;
use kubevirt_csi_proto::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode,
};
use kubevirt_csi_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginInfoRequest, NodeExpandVolumeRequest,
    NodeGetCapabilitiesRequest, NodeGetInfoRequest, NodeGetVolumeStatsRequest,
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, ProbeRequest, VolumeCapability,
};
use kubevirt_lab::daemon::{self, Daemon};
use kubevirt_lab::{Lab, LabConfig, wait};
use lab_guest::kubelet::GuestNode;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the kubevirt-csi-driver node plugin")]
struct Args {
    /// Stage/unstage rounds per measurement.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Size of each test disk in MiB.
    #[arg(long, default_value_t = 64)]
    disk_mib: u64,
    /// How long after NodeStageVolume starts waiting the disk appears.
    #[arg(long, default_value_t = 50)]
    appear_after_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run the plugin under this program (a path) and its arguments, split at
    /// spaces (`scripts/node-link-order.sh` profiles it with valgrind).
    #[arg(long)]
    wrapper: Option<String>,
}

/// A sparse file on a loop device, formatted ext4; detached on drop.
struct Disk {
    device: PathBuf,
}

impl Disk {
    /// A disk of `mib` MiB, formatted ext4 when `format` (else blank).
    fn new(backing: &Path, mib: u64, format: bool) -> anyhow::Result<Disk> {
        std::fs::File::create(backing)?.set_len(mib << 20)?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .context("run losetup (root needed)")?;
        ensure!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        let disk = Disk { device };
        if !format {
            return Ok(disk);
        }
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&disk.device)
            .status()
            .context("run mkfs.ext4")?;
        ensure!(mkfs.success(), "mkfs.ext4 failed");
        Ok(disk)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn rwo(block: bool) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                ..Default::default()
            })
        }),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn stage_request(
    volume: &str,
    staging: &Path,
    serial: &str,
    block: bool,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: volume.to_string(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(rwo(block)),
        volume_context: HashMap::from([
            ("serial".to_string(), serial.to_string()),
            ("bus".to_string(), "scsi".to_string()),
        ]),
        ..Default::default()
    }
}

fn link_path(node: &GuestNode, serial: &str) -> PathBuf {
    node.device_dir
        .join("disk/by-id")
        .join(format!("scsi-0QEMU_QEMU_HARDDISK_{serial}"))
}

/// Every call a kubelet and the sidecars make, once: identity, node
/// capabilities and info; a blank disk formatted, staged, published,
/// expanded, its stats read, unpublished and unstaged; the same disk as a
/// block volume. The plugin at rest after them has run all of its node
/// code, which is what it holds on a working node.
async fn every_call(
    node: &GuestNode,
    mut client: NodeClient<Channel>,
    channel: Channel,
    dir: &Path,
    disk_mib: u64,
) -> anyhow::Result<()> {
    let mut identity = IdentityClient::new(channel);
    identity.get_plugin_info(GetPluginInfoRequest {}).await?;
    identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await?;
    identity.probe(ProbeRequest {}).await?;
    client
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await?;
    client.node_get_info(NodeGetInfoRequest {}).await?;

    let disk = Disk::new(&dir.join("blank.img"), disk_mib, false)?;
    let serial = "bench-every-call";
    let link = link_path(node, serial);
    std::os::unix::fs::symlink(&disk.device, &link)?;
    for block in [false, true] {
        let volume = format!("pvc-every-call-{}", if block { "block" } else { "fs" });
        let staging = dir.join(format!("{volume}-staging"));
        let target = dir.join(format!("{volume}-target"));
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let stage = stage_request(&volume, &staging, serial, block);
        let volume_context = stage.volume_context.clone();
        client.node_stage_volume(stage).await?;
        client
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: volume.clone(),
                volume_context,
                staging_target_path: path(&staging),
                target_path: path(&target),
                volume_capability: Some(rwo(block)),
                ..Default::default()
            })
            .await?;
        client
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: volume.clone(),
                volume_path: path(&target),
                staging_target_path: path(&staging),
                volume_capability: Some(rwo(block)),
                ..Default::default()
            })
            .await?;
        client
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: volume.clone(),
                volume_path: path(&target),
                staging_target_path: path(&staging),
            })
            .await?;
        client
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume.clone(),
                target_path: path(&target),
            })
            .await?;
        client
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: volume,
                staging_target_path: path(&staging),
            })
            .await?;
    }
    std::fs::remove_file(&link)?;
    Ok(())
}

/// How much of the link order (`csi-driver/link/node.order`) the binary
/// still defines, as (found, listed): a compiler or dependency update
/// renames functions, and the RSS at rest grows with what no longer
/// matches. `None` when `nm` or the file is missing or the binary has no
/// symbol table.
fn link_order_coverage(binary: &Path) -> Option<(usize, usize)> {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../csi-driver/link/node.order");
    let order = std::fs::read_to_string(order).ok()?;
    let nm = Command::new("nm")
        .arg("--defined-only")
        .arg(binary)
        .output()
        .ok()?;
    if !nm.status.success() {
        return None;
    }
    let defined: std::collections::HashSet<&str> = std::str::from_utf8(&nm.stdout)
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let listed: Vec<&str> = order.lines().filter(|l| !l.is_empty()).collect();
    let found = listed.iter().filter(|f| defined.contains(*f)).count();
    Some((found, listed.len()))
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field}"))
}

fn quantile_ms(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len().saturating_sub(1)) as f64 * p).round() as usize;
    samples.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
}

struct Measured {
    rss_idle_kib: u64,
    rss_anon_kib: u64,
    rss_after_calls_kib: u64,
    stage: Vec<Duration>,
    appear: Vec<Duration>,
}

async fn measure(
    args: &Args,
    node: &GuestNode,
    plugin: &Daemon,
    channel: Channel,
    dir: &Path,
) -> anyhow::Result<Measured> {
    let mut client = NodeClient::new(channel.clone());
    client.node_get_info(NodeGetInfoRequest {}).await?;
    let pid = plugin.pid().context("plugin pid")?;
    let rss_idle_kib = status_kib(pid, "VmRSS")?;
    let rss_anon_kib = status_kib(pid, "RssAnon")?;

    let by_id = node.device_dir.join("disk/by-id");
    std::fs::create_dir_all(&by_id)?;
    let disk = Disk::new(&dir.join("disk.img"), args.disk_mib, true)?;
    let staging = dir.join("staging");

    // NodeStageVolume of a formatted device already present.
    let mut stage = Vec::new();
    for i in 0..args.rounds {
        let serial = format!("bench-present-{i}");
        let link = link_path(node, &serial);
        std::os::unix::fs::symlink(&disk.device, &link)?;
        let t = Instant::now();
        client
            .node_stage_volume(stage_request(
                &format!("pvc-p{i}"),
                &staging,
                &serial,
                false,
            ))
            .await?;
        stage.push(t.elapsed());
        client
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: format!("pvc-p{i}"),
                staging_target_path: staging.to_string_lossy().into_owned(),
            })
            .await?;
        std::fs::remove_file(&link)?;
    }

    // The disk appears while NodeStageVolume (block: nothing to mount)
    // waits for it: the time from the link appearing to the call returning.
    let mut appear = Vec::new();
    for i in 0..args.rounds {
        let serial = format!("bench-late-{i}");
        let link = link_path(node, &serial);
        let mut c = client.clone();
        let req = stage_request(&format!("pvc-l{i}"), &staging, &serial, true);
        let call = tokio::spawn(async move { c.node_stage_volume(req).await });
        // The plugin must be waiting before the disk arrives (a late hotplug).
        tokio::time::sleep(Duration::from_millis(args.appear_after_ms)).await;
        std::os::unix::fs::symlink(&disk.device, &link)?;
        let appeared = Instant::now();
        call.await??;
        appear.push(appeared.elapsed());
        client
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: format!("pvc-l{i}"),
                staging_target_path: staging.to_string_lossy().into_owned(),
            })
            .await?;
        std::fs::remove_file(&link)?;
    }
    every_call(node, client, channel, dir, args.disk_mib).await?;
    let rss_after_calls_kib = status_kib(pid, "VmRSS")?;
    Ok(Measured {
        rss_idle_kib,
        rss_anon_kib,
        rss_after_calls_kib,
        stage,
        appear,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = daemon::binary("kubevirt-csi-driver");
    if !binary.exists() {
        bail!(
            "{} is not built; run `cargo build --release -p kubevirt-csi-driver`",
            binary.display()
        );
    }
    let lab = Lab::start(LabConfig {
        vms: 1,
        devices: false,
        ..LabConfig::default()
    })
    .await?;
    let name = lab.nodes[0].clone();
    let node = GuestNode::new(&name, &lab.dir.join("nodes").join(&name));
    node.prepare()?;
    let sysfs = lab.dir.join("empty-sysfs");
    std::fs::create_dir_all(&sysfs)?;
    let plugin_args = node
        .plugin_args(&lab.guest_kubeconfig)
        .into_iter()
        .chain([format!("--sysfs-dir={}", sysfs.display())]);
    let wrapper: Vec<&str> = args.wrapper.iter().flat_map(|w| w.split(' ')).collect();
    let (program, leading) = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut leading: Vec<String> = rest.iter().map(|a| a.to_string()).collect();
            leading.push(binary.to_string_lossy().into_owned());
            (program.to_string(), leading)
        }
        None => ("kubevirt-csi-driver".to_string(), Vec::new()),
    };
    let mut plugin = daemon::spawn(
        &program,
        leading.into_iter().chain(plugin_args),
        [("RUST_LOG", "warn")],
        &lab.dir.join("node-plugin.log"),
    )?;
    // A plugin under a profiler takes many times longer to start.
    let start_within = Duration::from_secs(if wrapper.is_empty() { 30 } else { 300 });
    wait::file_exists(&node.csi_socket, true, start_within).await?;
    let channel = lab_guest::connect(&node.csi_socket).await?;
    let work = lab.dir.join("bench");
    std::fs::create_dir_all(&work)?;
    let result = measure(&args, &node, &plugin, channel, &work).await;
    let log = plugin.log();
    plugin.terminate(start_within).await?;
    lab.shutdown().await?;
    let mut m = result.with_context(|| format!("node plugin log:\n{log}"))?;

    let stage_p50 = quantile_ms(&mut m.stage, 0.5);
    let stage_p99 = quantile_ms(&mut m.stage, 0.99);
    let appear_p50 = quantile_ms(&mut m.appear, 0.5);
    let appear_p99 = quantile_ms(&mut m.appear, 0.99);
    let rss_mib = m.rss_idle_kib as f64 / 1024.0;
    let anon_mib = m.rss_anon_kib as f64 / 1024.0;
    let after_calls_mib = m.rss_after_calls_kib as f64 / 1024.0;
    let rows = [
        (
            "node plugin RSS at rest",
            rss_mib,
            "MiB",
            "<= 8",
            rss_mib <= 8.0,
        ),
        (
            "  of which anonymous (heap, stacks)",
            anon_mib,
            "MiB",
            "",
            true,
        ),
        (
            "node plugin RSS at rest after every call",
            after_calls_mib,
            "MiB",
            "<= 8",
            after_calls_mib <= 8.0,
        ),
        (
            "NodeStage of a formatted device p50",
            stage_p50,
            "ms",
            "<= 50",
            stage_p50 <= 50.0,
        ),
        (
            "NodeStage of a formatted device p99",
            stage_p99,
            "ms",
            "",
            true,
        ),
        (
            "disk appears -> block NodeStage returns p50",
            appear_p50,
            "ms",
            "<= 10",
            appear_p50 <= 10.0,
        ),
        (
            "disk appears -> block NodeStage returns p99",
            appear_p99,
            "ms",
            "",
            true,
        ),
    ];
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let order = link_order_coverage(&binary);
    if args.json {
        let results: Vec<_> = rows
            .iter()
            .map(|(metric, value, unit, target, met)| {
                json!({"metric": metric, "value": value, "unit": unit, "target": target, "met": met})
            })
            .collect();
        println!(
            "{}",
            json!({"machine": {"cores": cores},
                   "parameters": {"rounds": args.rounds, "disk_mib": args.disk_mib,
                                  "appear_after_ms": args.appear_after_ms},
                   "link_order": order.map(|(found, listed)| json!({"found": found, "listed": listed})),
                   "results": results})
        );
        return Ok(());
    }
    println!("CSI node plugin benchmark ({})", binary.display());
    println!("machine: {cores} cores");
    println!(
        "parameters: rounds={} disk_mib={} appear_after_ms={}",
        args.rounds, args.disk_mib, args.appear_after_ms
    );
    println!();
    println!(
        "| {:<44} | {:>8} | {:<4} | {:<6} | {:<3} |",
        "metric", "value", "unit", "target", "met"
    );
    println!("|{:-<46}|{:->10}|{:-<6}|{:-<8}|{:-<5}|", "", "", "", "", "");
    for (metric, value, unit, target, met) in rows {
        let met = match (target.is_empty(), met) {
            (true, _) => "",
            (false, true) => "yes",
            (false, false) => "no",
        };
        println!("| {metric:<44} | {value:>8.2} | {unit:<4} | {target:<6} | {met:<3} |");
    }
    println!();
    match order {
        Some((found, listed)) => println!(
            "link order: the binary defines {found} of the {listed} functions csi-driver/link/node.order \
             lists (names of two kinds of build, so each finds about two thirds; far fewer means the \
             order is stale: rerun scripts/node-link-order.sh)"
        ),
        None => println!("link order: not measured (needs nm, the order file and a symbol table)"),
    }
    Ok(())
}
