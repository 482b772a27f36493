//! How a VM boots from its `boot_disk` (firmware boot): the machine it
//! gets, its firmware (SeaBIOS, which QEMU bundles, or OVMF from Debian's
//! `ovmf` package when the task asks for `firmware = "uefi"`), and the boot
//! disk's overlay in the task directory (`boot.qcow2`, made as the `disks`
//! are: the base image is never written).
//!
//! Direct kernel boots (`kernel`) are not this module's: see [`super::qemu`].

use super::files::{self, FilesError};
use std::path::{Path, PathBuf};
use taba_types::vm::{VmDisk, VmFirmware, VmMachine};
use taba_types::TaskSpec;

/// Where Debian's `ovmf` package puts the firmware code, newest layout
/// first, each with its variable store template.
const OVMF: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// The boot disk's overlay, relative to the task directory.
pub const BOOT_DISK: &str = "boot.qcow2";
/// The UEFI variable store of the VM, relative to the task directory.
pub const EFI_VARS: &str = "efivars.fd";

/// Errors of a firmware boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// `firmware = "uefi"` on a node without OVMF.
    #[error("firmware = \"uefi\": no OVMF firmware on this node ({0} missing; install Debian's ovmf package, or use firmware = \"bios\")")]
    NoOvmf(String),
    /// The VM's UEFI variable store could not be made.
    #[error("copy the UEFI variable store {from} to {to}")]
    Vars {
        /// The template.
        from: PathBuf,
        /// The VM's copy.
        to: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The boot disk is not usable.
    #[error(transparent)]
    Disk(#[from] FilesError),
}

/// UEFI firmware of a VM: OVMF's code (read-only, shared) and the VM's own
/// copy of the variable store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uefi {
    /// `OVMF_CODE*.fd`.
    pub code: PathBuf,
    /// `<task_dir>/efivars.fd`.
    pub vars: PathBuf,
}

/// The machine of task `t`: what it asks for, else `q35` for a boot disk
/// (firmware, PCI) and `microvm` for a kernel.
pub fn machine(t: &TaskSpec) -> VmMachine {
    t.machine.unwrap_or(if t.boot_disk.is_some() {
        VmMachine::Q35
    } else {
        VmMachine::Microvm
    })
}

/// The firmware of task `t` when it boots a disk under UEFI: OVMF found on
/// the node, and the VM's variable store (copied from OVMF's template once;
/// kept across restarts of the task like its disks). `None` for SeaBIOS
/// (QEMU's default for q35, nothing to add) and for kernel boots. Returns
/// the store too when this call made it (to remove if the start fails).
pub fn uefi(t: &TaskSpec, task_dir: &Path) -> Result<Option<(Uefi, bool)>, BootError> {
    if t.boot_disk.is_none() || t.firmware.unwrap_or_default() != VmFirmware::Uefi {
        return Ok(None);
    }
    let Some((code, template)) = OVMF
        .iter()
        .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
    else {
        return Err(BootError::NoOvmf(OVMF[0].0.to_string()));
    };
    let vars = task_dir.join(EFI_VARS);
    let made = !vars.exists();
    if made {
        let tmp = task_dir.join(format!(".{EFI_VARS}.tmp"));
        std::fs::copy(template, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &vars))
            .map_err(|source| {
                let _ = std::fs::remove_file(&tmp);
                BootError::Vars {
                    from: template.into(),
                    to: vars.clone(),
                    source,
                }
            })?;
    }
    Ok(Some((
        Uefi {
            code: code.into(),
            vars,
        },
        made,
    )))
}

/// The boot disk of task `t` in `task_dir` (`boot.qcow2`, an overlay on
/// its base image): kept when it exists, else made. `None` for kernel
/// boots; else the file and whether this call made it.
pub fn ensure_boot_disk(
    qemu_img: &Path,
    resolver: &files::Resolver<'_>,
    task_dir: &Path,
    disk: Option<&VmDisk>,
) -> Result<Option<(PathBuf, bool)>, BootError> {
    let Some(disk) = disk else {
        return Ok(None);
    };
    Ok(Some(files::ensure_disk_file(
        qemu_img,
        resolver,
        &task_dir.join(BOOT_DISK),
        "boot_disk",
        disk,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: serde_json::Value) -> TaskSpec {
        let mut v = serde_json::json!({"name": "t", "driver": "vm"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_boot_disk_gets_q35_and_a_kernel_microvm() {
        assert_eq!(
            machine(&task(serde_json::json!({"boot_disk": "d.qcow2"}))),
            VmMachine::Q35
        );
        assert_eq!(
            machine(&task(serde_json::json!({"kernel": "k"}))),
            VmMachine::Microvm
        );
        assert_eq!(
            machine(&task(serde_json::json!({"kernel": "k", "machine": "q35"}))),
            VmMachine::Q35
        );
    }

    #[test]
    fn bios_needs_nothing_and_uefi_needs_ovmf() {
        let d = tempfile::tempdir().unwrap();
        let bios = task(serde_json::json!({"boot_disk": "d.qcow2"}));
        assert!(uefi(&bios, d.path()).unwrap().is_none());
        let t = task(serde_json::json!({"boot_disk": "d.qcow2", "firmware": "uefi"}));
        match uefi(&t, d.path()) {
            Ok(Some((u, made))) => {
                assert!(made && u.vars.is_file() && u.code.is_file());
                let (_, again) = uefi(&t, d.path()).unwrap().unwrap();
                assert!(!again, "the variable store is kept");
            }
            Ok(None) => panic!("uefi asked, none given"),
            Err(e) => {
                assert!(OVMF.iter().all(|(c, _)| !Path::new(c).is_file()));
                let e = e.to_string();
                assert!(e.contains("ovmf package") && e.contains("firmware"), "{e}");
                assert!(!d.path().join(EFI_VARS).exists());
            }
        }
    }
}
