//! What a `vm` task asks for: machine, acceleration, boot files, disks and
//! network (the task fields `vcpus`, `kernel`, `initrd`, `cmdline`,
//! `machine`, `accel`, `disks`, `network`), and their validation.
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
    match &t.kernel {
        Some(k) => check_path(errs, &format!("{p}.kernel"), k),
        None => {
            if t.initrd.is_some() {
                errs.push(format!("{p}.initrd"), "needs a kernel");
            }
            if t.cmdline.is_some() {
                errs.push(format!("{p}.cmdline"), "needs a kernel");
            }
            if t.disks.is_empty() {
                errs.push(
                    format!("{p}.kernel"),
                    "a vm needs a kernel (direct boot) or disks (firmware boots disks[0])",
                );
            } else if t.machine != Some(VmMachine::Q35) {
                errs.push(
                    format!("{p}.machine"),
                    "booting from a disk needs firmware: set machine = \"q35\" (microvm boots only a kernel)",
                );
            }
        }
    }
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
    if t.disks.len() > MAX_DISKS {
        errs.push(format!("{p}.disks"), format!("at most {MAX_DISKS} disks"));
    }
    for (i, d) in t.disks.iter().enumerate() {
        let dp = format!("{p}.disks[{i}]");
        match (&d.image, d.size) {
            (None, None) => errs.push(
                dp.clone(),
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
        // No kernel: firmware boot from disks[0] needs q35.
        let no_kernel = VM
            .replace("  kernel = \"debian/vmlinuz\"\n", "")
            .replace("  initrd = \"debian/initrd\"\n", "")
            .replace("  cmdline = \"quiet\"\n", "");
        let e = errors(&no_kernel);
        assert!(
            e.iter()
                .any(|e| e.contains("group[0].task[0].machine: booting from a disk")),
            "{e:?}"
        );
        assert!(errors(&no_kernel.replace("\"microvm\"", "\"q35\"")).is_empty());
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
