//! What a `vm` task asks for: machine, acceleration, boot files or a boot
//! disk, disks, cloud-init data and network (the task fields `vcpus`,
//! `kernel`, `initrd`, `cmdline`, `boot_disk`, `firmware`, `machine`,
//! `accel`, `disks`, `user_data`, `meta_data`, `network_config`,
//! `network`), and their validation.
//!
//! Paths name files in the directories the node allows for VM images (the
//! agent's `vm.image_dirs`); whether a file is there is checked by the
//! agent's `vm` driver at start, not here (this crate does no I/O).

use crate::units::ByteSize;
use crate::validate::ValidationErrors;
use crate::TaskSpec;
use serde::{Deserialize, Serialize};

/// Machine type of a VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum VmMachine {
    /// QEMU's minimal machine for direct kernel boot (virtio-mmio, no PCI,
    /// no firmware): the default when a kernel is given.
    #[default]
    Microvm,
    /// A PC with PCIe and firmware (SeaBIOS): booting from a disk.
    Q35,
}

impl VmMachine {
    /// QEMU's name of the machine.
    pub fn qemu_name(self) -> &'static str {
        match self {
            VmMachine::Microvm => "microvm",
            VmMachine::Q35 => "q35",
        }
    }
}

/// CPU virtualization of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum VmAccel {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// QEMU's binary translation: slower, runs anywhere.
    Tcg,
}

impl VmAccel {
    /// QEMU's name of the accelerator.
    pub fn qemu_name(self) -> &'static str {
        match self {
            VmAccel::Kvm => "kvm",
            VmAccel::Tcg => "tcg",
        }
    }
}

/// Network of a VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum VmNetwork {
    /// No network device.
    #[default]
    None,
    /// QEMU's user-mode network (NAT through the host's stack; no inbound).
    User,
}

/// Firmware of a VM that boots from its `boot_disk`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmFirmware {
    /// SeaBIOS, which QEMU bundles: boots the disk's MBR.
    #[default]
    Bios,
    /// OVMF (Debian's `ovmf` package on the node): boots an EFI system
    /// partition.
    Uefi,
}

/// Format of a disk image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// QEMU copy-on-write image.
    Qcow2,
    /// A plain image.
    Raw,
}

impl DiskFormat {
    /// QEMU's name of the format.
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// One disk of a VM. Every disk is a qcow2 file of the allocation: an
/// overlay on top of `image` (which is never written), or a blank disk of
/// `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    /// Base image in the node's VM image directories (read only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The base image's format; read from the file when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Size of a blank disk, or the size the overlay grows the image to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
}

/// The base images a `vm` task names (`boot_disk.image`, then each
/// `disks[i].image`), with their fields: files in the node's VM image
/// directories, or disk images of the image store.
pub fn disk_images(t: &TaskSpec) -> Vec<(String, &str)> {
    let boot = t
        .boot_disk
        .iter()
        .filter_map(|d| Some(("boot_disk.image".to_string(), d.image.as_deref()?)));
    let disks = t
        .disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((format!("disks[{i}].image"), d.image.as_deref()?)));
    boot.chain(disks).collect()
}

/// `boot_disk = "name"` or `boot_disk = { image = "name", ... }`.
pub(crate) fn deserialize_boot_disk<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<VmDisk>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Name(String),
        Disk(VmDisk),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Name(image)) => Some(VmDisk {
            image: Some(image),
            format: None,
            size: None,
        }),
        Some(Either::Disk(disk)) => Some(disk),
    })
}

/// Most vCPUs of one VM.
pub const MAX_VCPUS: u32 = 256;
/// Most disks of one VM.
pub const MAX_DISKS: usize = 16;
/// Longest kernel command line (the x86 boot protocol's limit is larger;
/// 4 KiB is what Linux takes by default).
pub const MAX_CMDLINE: usize = 4096;
/// Largest blank disk.
pub const MAX_DISK_SIZE: ByteSize = ByteSize(1 << 44);
/// Longest path of a kernel, initrd or disk image.
pub const MAX_PATH: usize = 1024;
/// Largest `user_data`, `meta_data` or `network_config` (the seed disk
/// holds them; cloud providers take 16 to 64 KiB of user data).
pub const MAX_CLOUD_INIT: usize = 256 << 10;

/// A path of a VM file: relative to a VM image directory or absolute, no
/// `..`, no NUL, not empty.
fn check_path(errs: &mut ValidationErrors, path: &str, p: &str) {
    if p.trim().is_empty() {
        errs.push(path, "must not be empty");
    } else if p.len() > MAX_PATH {
        errs.push(path, format!("longer than {MAX_PATH} bytes"));
    } else if p.contains('\0') || p.chars().any(|c| c.is_control()) {
        errs.push(path, "must not contain control characters");
    } else if p.split('/').any(|c| c == "..") {
        errs.push(
            path,
            "must not contain \"..\"; name a file in the node's VM image directories (agent option vm.image_dirs)",
        );
    }
}

/// The fields only a `vm` task has, set on a task of another driver.
fn vm_fields_set(t: &TaskSpec) -> Vec<&'static str> {
    let mut v = Vec::new();
    if t.vcpus.is_some() {
        v.push("vcpus");
    }
    if t.kernel.is_some() {
        v.push("kernel");
    }
    if t.initrd.is_some() {
        v.push("initrd");
    }
    if t.cmdline.is_some() {
        v.push("cmdline");
    }
    if t.machine.is_some() {
        v.push("machine");
    }
    if t.accel.is_some() {
        v.push("accel");
    }
    if !t.disks.is_empty() {
        v.push("disks");
    }
    if t.network.is_some() {
        v.push("network");
    }
    if t.boot_disk.is_some() {
        v.push("boot_disk");
    }
    if t.firmware.is_some() {
        v.push("firmware");
    }
    if t.user_data.is_some() {
        v.push("user_data");
    }
    if t.meta_data.is_some() {
        v.push("meta_data");
    }
    if t.network_config.is_some() {
        v.push("network_config");
    }
    v
}

/// Validate the VM fields of task `t` at path `p` (`group[0].task[1]`).
pub(crate) fn check_vm_task(errs: &mut ValidationErrors, p: &str, t: &TaskSpec) {
    if t.driver != "vm" {
        for f in vm_fields_set(t) {
            errs.push(
                format!("{p}.{f}"),
                format!("applies to the vm driver, not {:?}", t.driver),
            );
        }
        return;
    }
    if t.image.is_some() {
        errs.push(
            format!("{p}.image"),
            "the vm driver takes kernel/initrd or disks, not an image",
        );
    }
    if !t.command.is_empty() {
        errs.push(
            format!("{p}.command"),
            "the vm driver runs no command; use cmdline for the kernel's command line",
        );
    }
    if t.entrypoint.is_some() {
        errs.push(
            format!("{p}.entrypoint"),
            "the vm driver takes no entrypoint",
        );
    }
    if t.user.is_some() {
        errs.push(format!("{p}.user"), "the vm driver takes no user");
    }
    if let Some(n) = t.vcpus {
        if n == 0 || n > MAX_VCPUS {
            errs.push(
                format!("{p}.vcpus"),
                format!("must be between 1 and {MAX_VCPUS}"),
            );
        }
    }
    check_boot(errs, p, t);
    if let Some(i) = &t.initrd {
        check_path(errs, &format!("{p}.initrd"), i);
    }
    if let Some(c) = &t.cmdline {
        if c.len() > MAX_CMDLINE {
            errs.push(
                format!("{p}.cmdline"),
                format!("longer than {MAX_CMDLINE} bytes"),
            );
        } else if c.contains('\0') || c.contains('\n') {
            errs.push(format!("{p}.cmdline"), "must be one line without NUL");
        }
    }
    for (field, v) in [
        ("user_data", &t.user_data),
        ("meta_data", &t.meta_data),
        ("network_config", &t.network_config),
    ] {
        match v {
            Some(v) if v.len() > MAX_CLOUD_INIT => errs.push(
                format!("{p}.{field}"),
                format!("longer than {} KiB", MAX_CLOUD_INIT >> 10),
            ),
            Some(v) if v.contains('\0') => {
                errs.push(format!("{p}.{field}"), "must not contain NUL")
            }
            _ => {}
        }
    }
    if t.user_data.is_none() && (t.meta_data.is_some() || t.network_config.is_some()) {
        let f = if t.meta_data.is_some() {
            "meta_data"
        } else {
            "network_config"
        };
        errs.push(
            format!("{p}.{f}"),
            "goes on the cloud-init seed disk with user_data: set user_data too",
        );
    }
    if t.disks.len() > MAX_DISKS {
        errs.push(format!("{p}.disks"), format!("at most {MAX_DISKS} disks"));
    }
    for (i, d) in t.disks.iter().enumerate() {
        check_disk(errs, &format!("{p}.disks[{i}]"), d);
    }
}

/// How the VM boots: a kernel (direct boot: `initrd`, `cmdline`; machine
/// `microvm` by default) or a `boot_disk` (firmware boot: machine `q35`,
/// `firmware`), exactly one of them.
fn check_boot(errs: &mut ValidationErrors, p: &str, t: &TaskSpec) {
    match (&t.kernel, &t.boot_disk) {
        (Some(_), Some(_)) => errs.push(
            format!("{p}.boot_disk"),
            "kernel and boot_disk exclude each other: boot a kernel directly, or a disk through firmware",
        ),
        (None, None) => errs.push(
            format!("{p}.kernel"),
            "a vm needs a kernel (direct boot) or a boot_disk (firmware boot)",
        ),
        (Some(k), None) => check_path(errs, &format!("{p}.kernel"), k),
        (None, Some(d)) => {
            let dp = format!("{p}.boot_disk");
            if d.image.is_none() {
                errs.push(
                    format!("{dp}.image"),
                    "a boot disk needs an image to boot (a blank disk boots nothing)",
                );
            } else {
                check_disk(errs, &dp, d);
            }
            if t.initrd.is_some() {
                errs.push(format!("{p}.initrd"), "needs a kernel; a boot_disk brings its own");
            }
            if t.cmdline.is_some() {
                errs.push(
                    format!("{p}.cmdline"),
                    "needs a kernel; a boot_disk's boot loader sets the command line",
                );
            }
            if t.machine == Some(VmMachine::Microvm) {
                errs.push(
                    format!("{p}.machine"),
                    "microvm has no firmware and boots only a kernel: use q35 (the default with a boot_disk)",
                );
            }
        }
    }
    if t.firmware.is_some() && t.kernel.is_some() {
        errs.push(
            format!("{p}.firmware"),
            "applies to a boot_disk; a kernel is booted directly",
        );
    }
}

/// One disk (`disks[i]` or `boot_disk`) at path `dp`.
fn check_disk(errs: &mut ValidationErrors, dp: &str, d: &VmDisk) {
    match (&d.image, d.size) {
        (None, None) => errs.push(
            dp,
            "needs an image (a base the VM's overlay sits on) or a size (a blank disk)",
        ),
        (Some(img), _) => check_path(errs, &format!("{dp}.image"), img),
        (None, Some(_)) => {
            if d.format.is_some() {
                errs.push(
                    format!("{dp}.format"),
                    "is the format of an image; a blank disk has none",
                );
            }
        }
    }
    if let Some(s) = d.size {
        if s.0 < 1 << 20 {
            errs.push(format!("{dp}.size"), "must be at least 1MiB");
        } else if s > MAX_DISK_SIZE {
            errs.push(
                format!("{dp}.size"),
                format!("must be at most {MAX_DISK_SIZE}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_job_toml;

    const VM: &str = r#"
name = "vm"
[[group]]
name = "g"
  [[group.task]]
  name = "guest"
  driver = "vm"
  kernel = "debian/vmlinuz"
  initrd = "debian/initrd"
  cmdline = "quiet"
  vcpus = 2
  machine = "microvm"
  accel = "tcg"
  network = "user"
  disks = [{ image = "debian/root.qcow2" }, { size = "1GiB" }]
  resources = { memory = "512MiB" }
"#;

    fn errors(toml: &str) -> Vec<String> {
        match parse_job_toml(toml.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().split("; ").map(str::to_string).collect(),
        }
    }

    #[test]
    fn a_vm_task_parses_with_every_field() {
        let spec = parse_job_toml(VM.as_bytes()).unwrap();
        let t = &spec.groups[0].tasks[0];
        assert_eq!(t.vcpus, Some(2));
        assert_eq!(t.machine, Some(VmMachine::Microvm));
        assert_eq!(t.accel, Some(VmAccel::Tcg));
        assert_eq!(t.network, Some(VmNetwork::User));
        assert_eq!(t.disks.len(), 2);
        assert_eq!(t.disks[1].size, Some(ByteSize(1 << 30)));
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(crate::parse::parse_job_json(&json).unwrap(), spec);
    }

    #[test]
    fn bad_vm_fields_name_their_path() {
        let e = errors(&VM.replace("vcpus = 2", "vcpus = 0"));
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].vcpus: must be between 1")),
            "{e:?}"
        );
        let e = errors(&VM.replace("debian/vmlinuz", "../../etc/shadow"));
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].kernel: must not contain \"..\"")),
            "{e:?}"
        );
        let e = errors(&VM.replace("{ size = \"1GiB\" }", "{ }"));
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].disks[1]: needs an image")),
            "{e:?}"
        );
        let e = errors(&VM.replace("accel = \"tcg\"", "accel = \"hvf\""));
        assert!(e.iter().any(|e| e.contains("accel")), "{e:?}");
        // No kernel and no boot disk; both; a boot disk on microvm.
        let no_kernel = VM
            .replace("  kernel = \"debian/vmlinuz\"\n", "")
            .replace("  initrd = \"debian/initrd\"\n", "")
            .replace("  cmdline = \"quiet\"\n", "")
            .replace("  machine = \"microvm\"\n", "");
        let e = errors(&no_kernel);
        assert!(
            e.iter().any(|e| e.contains(
                "group[0].task[0].kernel: a vm needs a kernel (direct boot) or a boot_disk"
            )),
            "{e:?}"
        );
        let boot = no_kernel.replace("vcpus = 2", "vcpus = 2\n  boot_disk = \"debian.qcow2\"");
        assert!(errors(&boot).is_empty(), "{:?}", errors(&boot));
        let spec = parse_job_toml(boot.as_bytes()).unwrap();
        let t = &spec.groups[0].tasks[0];
        assert_eq!(
            t.boot_disk.as_ref().unwrap().image.as_deref(),
            Some("debian.qcow2")
        );
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(crate::parse::parse_job_json(&json).unwrap(), spec);
        let table = no_kernel.replace(
            "vcpus = 2",
            "vcpus = 2\n  boot_disk = { image = \"d.raw\", format = \"raw\", size = \"2GiB\" }\n  firmware = \"uefi\"",
        );
        let spec = parse_job_toml(table.as_bytes()).unwrap();
        let t = &spec.groups[0].tasks[0];
        assert_eq!(t.boot_disk.as_ref().unwrap().format, Some(DiskFormat::Raw));
        assert_eq!(t.firmware, Some(VmFirmware::Uefi));
        let e = errors(&VM.replace(
            "vcpus = 2",
            "vcpus = 2\n  boot_disk = \"d.qcow2\"\n  firmware = \"bios\"",
        ));
        assert!(
            e.iter().any(|e| e
                .contains("group[0].task[0].boot_disk: kernel and boot_disk exclude each other")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].firmware: applies to a boot_disk")),
            "{e:?}"
        );
        let e = errors(&boot.replace(
            "vcpus = 2",
            "vcpus = 2\n  machine = \"microvm\"\n  cmdline = \"x\"",
        ));
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].machine: microvm has no firmware")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].cmdline: needs a kernel")),
            "{e:?}"
        );
        let e =
            errors(&no_kernel.replace("vcpus = 2", "vcpus = 2\n  boot_disk = { size = \"1GiB\" }"));
        assert!(
            e.iter().any(|e| e.contains("group[0].task[0].boot_disk.image: a boot disk needs an image")),
            "{e:?}"
        );
        let e = errors(&boot.replace("vcpus = 2", "vcpus = 2\n  boot_disk = \"../x\""));
        assert!(!e.is_empty(), "a duplicate key is refused");
        let e = errors(&no_kernel.replace("vcpus = 2", "vcpus = 2\n  boot_disk = \"../x\""));
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].boot_disk.image: must not contain")),
            "{e:?}"
        );
        // cloud-init data: sizes, and meta_data only with user_data.
        let big = "x".repeat(MAX_CLOUD_INIT + 1);
        let e = errors(&VM.replace("vcpus = 2", &format!("vcpus = 2\n  user_data = \"{big}\"")));
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].user_data: longer than 256 KiB")),
            "{e:?}"
        );
        let e = errors(&VM.replace("vcpus = 2", "vcpus = 2\n  meta_data = \"a: b\""));
        assert!(
            e.iter().any(|e| e.contains("group[0].task[0].meta_data: goes on the cloud-init seed disk")),
            "{e:?}"
        );
        assert!(errors(&VM.replace(
            "vcpus = 2",
            "vcpus = 2\n  user_data = \"#cloud-config\"\n  meta_data = \"a: b\""
        ))
        .is_empty());
        // vm fields on another driver, and other drivers' fields on a vm.
        let exec = VM.replace("driver = \"vm\"", "driver = \"exec\"\n  command = [\"x\"]");
        let e = errors(&exec);
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].kernel: applies to the vm driver")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].disks: applies to the vm driver")),
            "{e:?}"
        );
        let e = errors(&VM.replace(
            "vcpus = 2",
            "vcpus = 2\n  image = \"busybox\"\n  command = [\"x\"]",
        ));
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].image: the vm driver takes")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].command: the vm driver runs no command")),
            "{e:?}"
        );
    }
}
